"""Comparison report from training workdirs: a table, repeats over seeds, the attention
ablation, curves and attention maps.

    python -m jax_attn.tools.report runs/sa_cnn_notebook runs/vit_notebook --out report/

Writes ``REPORT.md`` and PNGs (curves with matplotlib; attention maps with
``jax_attn.attention_maps``, from the newest checkpoint of each run on its first eval
images). Packaged recipes without a run say "not run".
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
from absl import app, flags, logging  # noqa: E402

from jax_attn import attention_maps, configs, data, inference, models  # noqa: E402
from jax_attn.tools.comparisons import (  # noqa: E402
    attention_ablation, run_name, seed_groups)
from jax_attn.errors import UserError  # noqa: E402

_OUT = flags.DEFINE_string("out", "report", "Output directory for REPORT.md and the PNGs.")
_IMAGES = flags.DEFINE_integer("images", 3, "Eval images to draw attention maps for (0: none).",
                               lower_bound=0)


def load_run(workdir: Path) -> dict[str, Any]:
  """summary.json, config.json and metrics.jsonl of one workdir."""
  try:
    config = configs.from_json(json.loads((workdir / "config.json").read_text()))
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
  except (OSError, ValueError, UserError) as e:
    raise UserError(f"{workdir} is not a jax_attn workdir ({e}): pass directories written by "
                    "python -m jax_attn.main") from None
  name = run_name(workdir)
  label = f"{config.model_name}/{config.recipe}" + (
      f" ({name})" if name != f"{config.model_name}_{config.recipe}" else "")
  return {"dir": workdir, "label": label, "config": config, "summary": summary, "metrics": metrics}


def packaged_recipes() -> dict[str, list[tuple[str, ...]]]:
  """Per model family, its packaged recipes, each with its aliases."""
  result = {}
  for name in models.MODELS:
    module = configs.recipe_module(name)
    result[name] = [(recipe, *[a for a, r in module.ALIASES.items() if r == recipe])
                    for recipe in module.RECIPES]
  return result


def _fmt(value: Any, spec: str) -> str:
  return "not run" if value is None else format(value, spec)


def _batch_and_lr(config: Any) -> str:
  """Batch size and peak learning rate (what tells a recipe's variants apart), e.g. ``128, 0.004``."""
  return f"{config['batch_size']}, {config['learning_rate']:g}"


def _accuracy(summary: dict[str, Any], config: Any) -> str:
  """Eval accuracy; with test-time augmentation, names its views and gives the plain figure."""
  text = _fmt(summary.get("eval_accuracy"), ".2%")
  if summary.get("eval_accuracy_no_flip") is not None:
    shift = config.get("eval_translate", 0)  # views: unmoved and moved by +-shift px, mirrored
    views = (2 if config.get("eval_flip") else 1) * (3 if shift else 1)
    text += f" ({f'{views}-view' if shift else 'flip'} TTA; {summary['eval_accuracy_no_flip']:.2%} without)"
  return text


def _device(summary: dict[str, Any]) -> str:
  if "devices" not in summary:
    return "not recorded (incomplete run)"  # written with summary.json at the end
  return f"{summary['devices']} x {summary.get('device_kind', '-')}"


def table(runs: list[dict[str, Any]]) -> str:
  rows = ["| run | recipe | batch, peak LR | parameters | epochs | eval accuracy "
          "| eval loss | eval split | train wall (s) | train img/s | device |", "|" + "---|" * 11]
  summaries = [run["summary"] or _partial_summary(run) for run in runs]
  for run, s in zip(runs, summaries):
    rows.append(
        f"| {run['label']} | {configs.describe(run['config'])} | "
        f"{_batch_and_lr(run['config'])} | "
        f"{_fmt(s.get('params'), ',')} | {_fmt(s.get('epochs'), '.3g')} | "
        f"{_accuracy(s, run['config'])} | {_fmt(s.get('eval_loss'), '.4f')} | "
        f"{s.get('eval_split', 'not run')} | {_fmt(s.get('train_wall_s'), ',.0f')} | "
        f"{_fmt(s.get('train_images_per_sec'), ',.0f')} | "
        f"{_device(s)} |")
  present = {(r["config"].model_name, r["config"].recipe) for r, s in zip(runs, summaries) if s}
  for model, recipes in sorted(packaged_recipes().items()):
    for names in recipes:  # a recipe and its aliases (airbench = tuned) are one row
      if not any((model, name) in present for name in names):
        rows.append(f"| - | {model}/{' = '.join(names)} |" + " not run |" * 9)
  return "\n".join(rows)


def _partial_summary(run: dict[str, Any]) -> dict[str, Any]:
  """For a run without summary.json: its last evaluated epoch, marked incomplete."""
  evals = [m for m in run["metrics"] if m.get("eval_accuracy") is not None]
  if not evals:
    return {}
  last = evals[-1]
  config = run["config"]
  size = config.image_size
  return {"params": models.count_params(models.param_shapes(models.get_model(config),
                                                             (size, size, 3))),
          "epochs": last["epoch"], "eval_accuracy": last["eval_accuracy"],
          "eval_loss": last["eval_loss"], "train_wall_s": last["wall_s"],
          "eval_accuracy_no_flip": last.get("eval_accuracy_no_flip"),
          "train_images_per_sec": last.get("images_per_sec"),
          "eval_split": f"{run['config'].data.eval_split or 'held-out'} "
                        f"(incomplete: stopped after epoch {last['epoch']})"}


def loss_windows(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The ``window`` records (every ``--log_every_steps``): an epoch's closing record holds
  the whole epoch's mean loss, which drawn on the same line makes a spike at every epoch."""
  return [m for m in metrics if m["kind"] == "window"]


def plot_curves(runs: list[dict[str, Any]], out: Path) -> list[str]:
  """Training loss and eval accuracy per epoch, all runs on shared axes, one legend below."""
  rows = -(-len(runs) // 2)  # legend rows, two runs to a row
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4 + 0.22 * rows))
  for run in runs:
    per_epoch = _steps_per_epoch(run)
    evals = [m for m in run["metrics"] if m.get("eval_accuracy") is not None]
    windows = loss_windows(run["metrics"])
    loss_ax.plot([m["step"] / per_epoch for m in windows],
                 [m["train_loss"] for m in windows], label=run["label"], alpha=0.8)
    acc_ax.plot([m["epoch"] for m in evals], [100 * m["eval_accuracy"] for m in evals],
                marker="o", label=run["label"])
  loss_ax.set(xlabel="epoch", ylabel="training loss", title="Training loss (per logging window)")
  acc_ax.set(xlabel="epoch", ylabel="eval accuracy (%)", title="Eval accuracy")
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
  handles, labels = acc_ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.22 * rows / (4 + 0.22 * rows) + 0.02, 1, 1))
  fig.savefig(out / "curves.png", dpi=110)
  plt.close(fig)
  return ["curves.png"]


def _steps_per_epoch(run: dict[str, Any]) -> float:
  s = run["summary"]
  if s and s.get("epochs"):
    return s["steps"] / s["epochs"]
  ends = [m for m in run["metrics"] if m.get("eval_accuracy") is not None]
  return ends[0]["step"] / ends[0]["epoch"] if ends else 1.0


def plot_attention(run: dict[str, Any], out: Path, count: int) -> list[str]:
  """Attention maps of the first ``count`` eval images (``attention_maps.draw``)."""
  config = run["config"]
  trained = inference.load(run["dir"])
  source = data.make_source(config)
  eval_spec = config.data.eval_split or data.default_splits(source)[1]
  images = source.load(eval_spec).images[:count]  # the eval split only: no training decode
  layers = trained.attention(images)
  if not layers:
    raise UserError(f"the model of {run_name(run['dir'])} ({configs.describe(config)}) has no "
                    "attention layers")
  files = []
  for i, image in enumerate(images):
    filename = f"attention_{run_name(run['dir']).replace('/', '_')}_{i}.png"
    attention_maps.draw(config.model_name, image, [w[i] for w in layers], out / filename)
    files.append(filename)
  return files


def write_report(workdirs: list[str], out: str, images: int = 3) -> Path:
  runs = [load_run(Path(w)) for w in workdirs]
  out_dir = Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  lines = ["# jax_attn comparison report", "",
           "Generated by `python -m jax_attn.tools.report " + " ".join(workdirs) + f" --out {out}"
           f" --images={images}`.", "",
           table(runs), ""]
  groups = seed_groups(runs)
  if groups:
    lines += ["## Repeats of one recipe (runs that differ only in their seed)", "", groups, ""]
  ablation = attention_ablation(runs)
  if ablation:
    lines += ["## Does attention help? (the same recipe without its attention layers)", "",
              ablation, ""]
  lines += ["## Curves", "", "![curves](curves.png)", ""]
  plot_curves(runs, out_dir)
  lines += ["## Attention maps", ""]
  if not images:
    lines += ["not drawn: --images=0 asked for none.", ""]
  else:
    for run in runs:
      lines += [f"### {run['label']}", ""]
      try:
        lines += [f"![{f}]({f})" for f in plot_attention(run, out_dir, images)] + [""]
      except UserError as e:
        lines += [f"not drawn: {e}", ""]
  path = out_dir / "REPORT.md"
  path.write_text("\n".join(lines))
  return path


def main(argv: list[str]) -> None:
  if len(argv) < 2:
    raise app.UsageError("give one or more workdirs: python -m jax_attn.tools.report RUN_DIR... "
                         "--out DIR")
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    print(write_report(argv[1:], _OUT.value, _IMAGES.value))
  except UserError as e:
    sys.stderr.write(f"jax_attn.report: error: {e}\n")
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
