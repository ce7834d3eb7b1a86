"""Comparison report from training workdirs: a table, curves and attention maps.

    python -m jax_attn.report runs/sa_cnn_seed runs/vit_seed --out report/

Writes ``REPORT.md`` and PNGs (matplotlib, Agg). Attention maps come from the
latest checkpoint of each run, on the first eval images, using the sown
``attention_weights``. Known (model, recipe) pairs without a run say "not run".
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from jax_attn import config as config_lib, data, models, trained  # noqa: E402
from jax_attn.comparisons import (  # noqa: E402
    architecture, attention_ablation, run_name, seed_groups)
from jax_attn.errors import UserError  # noqa: E402

_OUT = flags.DEFINE_string("out", "report", "Output directory for REPORT.md and the PNGs.")
_IMAGES = flags.DEFINE_integer("images", 3, "Eval images to draw attention maps for (0: none).",
                               lower_bound=0)


def load_run(workdir: Path) -> dict[str, Any]:
  """summary.json, config.json and metrics.jsonl of one workdir."""
  try:
    config = config_lib.from_json(json.loads((workdir / "config.json").read_text()))
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
  """Per model family, its packaged recipes, each with the names it goes by."""
  from jax_attn.configs import sa_cnn, vit  # pylint: disable=g-import-not-at-top
  result = {}
  for name, module in (("sa_cnn", sa_cnn), ("vit", vit)):
    groups: dict[Any, list[str]] = {}
    for recipe, make in module.RECIPES.items():
      groups.setdefault(make, []).append(recipe)
    result[name] = [tuple(sorted(names, key=len)) for names in groups.values()]
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
  rows = ["| run | model | recipe | preset | batch, peak LR | parameters | epochs | eval accuracy "
          "| eval loss | eval split | train wall (s) | train img/s | device |", "|" + "---|" * 13]
  summaries = [run["summary"] or _partial_summary(run) for run in runs]
  for run, s in zip(runs, summaries):
    rows.append(
        f"| {run['label']} | {run['config'].model_name} | {run['config'].recipe} | "
        f"{architecture(run['config'])} | {_batch_and_lr(run['config'])} | "
        f"{_fmt(s.get('params'), ',')} | {_fmt(s.get('epochs'), '.3g')} | "
        f"{_accuracy(s, run['config'])} | {_fmt(s.get('eval_loss'), '.4f')} | "
        f"{s.get('eval_split', 'not run')} | {_fmt(s.get('train_wall_s'), ',.0f')} | "
        f"{_fmt(s.get('train_images_per_sec'), ',.0f')} | "
        f"{_device(s)} |")
  present = {(r["config"].model_name, r["config"].recipe) for r, s in zip(runs, summaries) if s}
  for model, recipes in sorted(packaged_recipes().items()):
    for names in recipes:  # a recipe and its aliases (tuned = tuned_vN) are one row
      if not any((model, name) in present for name in names):
        rows.append(f"| - | {model} | {' = '.join(names)} |" + " not run |" * 10)
  return "\n".join(rows)


def _partial_summary(run: dict[str, Any]) -> dict[str, Any]:
  """For a run without summary.json: its last evaluated epoch, marked incomplete."""
  evals = [m for m in run["metrics"] if m.get("eval_accuracy") is not None]
  if not evals:
    return {}
  last = evals[-1]
  config = run["config"]
  model = config_lib.build_model(config, attention_impl="einsum")
  size = config.image_size or 32
  return {"params": models.count_params(models.param_shapes(model, (size, size, 3))),
          "epochs": last["epoch"], "eval_accuracy": last["eval_accuracy"],
          "eval_loss": last["eval_loss"], "train_wall_s": last["wall_s"],
          "eval_accuracy_no_flip": last.get("eval_accuracy_no_flip"),
          "train_images_per_sec": last.get("images_per_sec"),
          "eval_split": f"{run['config'].data.eval_split or 'held-out'} "
                        f"(incomplete: stopped after epoch {last['epoch']})"}


def loss_windows(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The per-window records (every ``--log_every_steps``), without each epoch's closing
  record: that one holds the whole epoch's mean loss, which drawn on the same line makes a
  spike at every epoch boundary."""
  return [m for m, after in zip(metrics, metrics[1:]) if after["epoch"] == m["epoch"]]


def plot_curves(runs: list[dict[str, Any]], out: Path) -> list[str]:
  """Training loss and eval accuracy per epoch, all runs on shared axes."""
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
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
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "curves.png", dpi=110)
  plt.close(fig)
  return ["curves.png"]


def _steps_per_epoch(run: dict[str, Any]) -> float:
  s = run["summary"]
  if s and s.get("epochs"):
    return s["steps"] / s["epochs"]
  ends = [m for m in run["metrics"] if m.get("eval_accuracy") is not None]
  return ends[0]["step"] / ends[0]["epoch"] if ends else 1.0


def _attention(run: dict[str, Any], count: int) -> tuple[np.ndarray, list[np.ndarray], str]:
  """Eval images (uint8) and the sown attention weights of each attention layer."""
  config = run["config"]
  trained_run = trained.load_trained(run["dir"], config)
  source = data.make_source(config.data, config.num_classes)
  eval_spec = config.data.eval_split or data.default_splits(source)[1]
  images = source.load(eval_spec).images[:count]  # the eval split only: no training decode
  _, layers = trained.apply(trained_run, images, attention=True)
  if not layers:
    raise UserError(f"the model of {run_name(run['dir'])} has no attention layers "
                    f"({architecture(run['config'])})")
  return images, layers, eval_spec


def _overlay(ax, image: np.ndarray, heat: np.ndarray, title: str,
             query: tuple[int, int] | None = None) -> None:
  zoom = image.shape[0] // heat.shape[0]
  ax.imshow(image)
  ax.imshow(np.kron(heat, np.ones((zoom, zoom))), cmap="inferno", alpha=0.55)
  if query is not None:  # the query pixel whose attention is drawn
    ax.plot((query[1] + 0.5) * zoom - 0.5, (query[0] + 0.5) * zoom - 0.5, "c+", markersize=8)
  ax.set_title(title, fontsize=7)
  ax.axis("off")


def attention_panels(model_name: str, layers: list[np.ndarray]
                     ) -> list[tuple[np.ndarray, str, tuple[int, int] | None]]:
  """(heat map, title, query pixel) per panel, from one image's attention weights (one array
  per attention layer, without the batch axis)."""
  panels = []
  if model_name == "sa_cnn":  # query pixels: centre and a corner, over all positions, per SA layer
    for layer, weights in enumerate(layers):
      side = int(round(np.sqrt(weights.shape[-1])))
      for label, (y, x) in (("centre", (side // 2, side // 2)), ("corner", (side // 4, side // 4))):
        panels.append((weights[y * side + x].reshape(side, side), f"SA{layer + 1} {label}", (y, x)))
  else:  # ViT: class token -> patches, per head and averaged, plus attention rollout
    last = layers[-1]
    side = int(round(np.sqrt(last.shape[-1] - 1)))
    for head in range(last.shape[0]):
      panels.append((last[head, 0, 1:].reshape(side, side), f"last block head {head}", None))
    panels.append((last.mean(0)[0, 1:].reshape(side, side), "last block mean", None))
    rollout = np.eye(last.shape[-1])
    for weights in layers:
      mixed = 0.5 * weights.mean(0) + 0.5 * np.eye(last.shape[-1])
      rollout = mixed / mixed.sum(-1, keepdims=True) @ rollout
    panels.append((rollout[0, 1:].reshape(side, side), "rollout", None))
  return panels


def draw_attention(model_name: str, image: np.ndarray, layers: list[np.ndarray], path: Path,
                   title: str = "image") -> None:
  """One PNG: ``image`` (uint8, as the model saw it) and its attention panels side by side."""
  panels = attention_panels(model_name, layers)
  fig, axes = plt.subplots(1, len(panels) + 1, figsize=(1.6 * (len(panels) + 1), 1.9))
  axes[0].imshow(image)
  axes[0].set_title(title, fontsize=7)
  axes[0].axis("off")
  for ax, (heat, panel_title, query) in zip(axes[1:], panels):
    _overlay(ax, image, heat / max(heat.max(), 1e-12), panel_title, query)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_attention(run: dict[str, Any], out: Path, count: int) -> list[str]:
  images, layers, _ = _attention(run, count)
  files = []
  for i, image in enumerate(images):
    filename = f"attention_{run_name(run['dir']).replace('/', '_')}_{i}.png"
    draw_attention(run["config"].model_name, image, [w[i] for w in layers], out / filename)
    files.append(filename)
  return files


def write_report(workdirs: list[str], out: str, images: int = 3) -> Path:
  runs = [load_run(Path(w)) for w in workdirs]
  out_dir = Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  lines = ["# jax_attn comparison report", "",
           "Generated by `python -m jax_attn.report " + " ".join(workdirs) + f" --out {out}"
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
    raise app.UsageError("give one or more workdirs: python -m jax_attn.report RUN_DIR... --out DIR")
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    print(write_report(argv[1:], _OUT.value, _IMAGES.value))
  except UserError as e:
    sys.stderr.write(f"jax_attn.report: error: {e}\n")
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
