"""The GPU-speed figures of one ``experiments/gpu_speed.sh`` output, against their targets.

    python -m jax_attn.tools.speed_report RUNS_DIR [--plot=scaling.png]

RUNS_DIR is what the script wrote (its ``runs.tgz`` unpacked): ``bench_NAME.json`` and
``.err`` (phase A, the race, with its ``profile_table.md``; phase D, ``bench_scale_SIZEpx_IMPL``),
the 10-epoch runs (phase B) and the 300-step bf16 runs ``nan_I`` with their second wave
(phase C). It prints markdown: one table per phase, each followed by its targets, met or
missed by how much, and phase A's profile tables.
A ratio to PyTorch is only ever read from one bench call (both sides timed alternately in
one process), never formed across calls. ``--plot`` also draws the scaling, step time and
peak memory against positions N (matplotlib, imported only then). Hand-written: these are
this project's own files and targets.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

TORCH_RATIO = 4.0          # notebook SA-CNN step >= 4x the notebook's eager PyTorch
EPOCHS_WALL_S = 15.0       # the notebook recipe's 10 epochs, train wall time
FLOOR_S = 3.0              # 3.3 PFLOP at the chip's bf16 peak
BF16_ACCURACY_GAP = 0.01   # bf16's 10-epoch accuracy within 1 point of float32's
NAN_RUNS, NAN_STEPS = 10, 300
_NAN_LINE = re.compile(r"became -?(nan|inf)|non-finite|FloatingPointError")
_SCALE = re.compile(r"scale_(\d+)px_(\w+)")


def bench_error(err: str) -> str:
  """What went wrong in a bench call without a JSON result, in a few words."""
  if re.search(r"RESOURCE_EXHAUSTED|[Oo]ut of memory", err):
    return "out of memory"
  # a traceback's last line, or our own one-line error (not a log line that mentions errors)
  lines = re.findall(r"^(?:[\w.]*(?:Error|Exception)\b.*|jax_attn: error: .*)$", err, re.M)
  return lines[-1].strip()[:120] if lines else "no result (cut off at its time limit?)"


def load_benches(runs: Path) -> dict[str, dict[str, Any]]:
  """``{NAME: result}`` of every ``bench_NAME.json``; a call without one gets ``error``."""
  benches = {}
  for path in sorted(runs.glob("bench_*.json")):
    name = path.stem.removeprefix("bench_")
    try:
      benches[name] = json.loads(path.read_text())[0]
    except (ValueError, IndexError, KeyError):
      err = path.with_suffix(".err")
      benches[name] = {"error": bench_error(err.read_text() if err.exists() else "")}
  return benches


def _fmt(value: Any, spec: str) -> str:
  return "-" if value is None else spec.format(value)


def _gib(value: int | None) -> str:
  return _fmt(None if value is None else value / 2**30, "{:.2f}")


def _table(*columns: str) -> list[str]:
  """A markdown table's header lines."""
  return [_row(*columns), "|" + "---|" * len(columns)]


def _row(*cells: Any) -> str:
  return "| " + " | ".join(map(str, cells)) + " |"


def _seed_race(result: dict[str, Any]) -> bool:
  """Whether a bench timed what the targets are about: the notebook's SA-CNN, 32 px, batch 64."""
  return (result.get("model"), result.get("recipe"), result.get("image_size"),
          result.get("batch_size")) == ("sa_cnn", "notebook", 32, 64)


def race(benches: dict[str, dict[str, Any]]) -> list[str]:
  rows = {n: r for n, r in benches.items() if not _SCALE.fullmatch(n)}
  devices = sorted({f"{r['device_kind']} ({r['backend']})" for r in rows.values() if "backend" in r})
  lines = [f"Device: {', '.join(devices) or 'unknown'}. Targets count the notebook SA-CNN at 32 px, "
           "batch 64, only.", ""]
  lines += _table("run", "dtype", "attention", "K", "step ms", "img/s", "TFLOP/s", "peak GiB",
                  "eager torch ms", "x torch", "torch.compile ms", "x compile", "note")
  for name, r in rows.items():
    note = r.get("error") or "; ".join(r[k] for k in ("torch_error", "torch_compile_error") if k in r)
    lines.append(_row(
        name, r.get("dtype", "-"), r.get("attention_impl", "-"), r.get("steps_per_call", "-"),
        _fmt(r.get("train_step_ms"), "{:.2f}"), _fmt(r.get("train_images_per_sec"), "{:,.0f}"),
        _fmt(r.get("achieved_tflops"), "{:.1f}"), _gib(r.get("peak_memory_bytes")),
        _fmt(r.get("torch_train_step_ms"), "{:.2f}"), _fmt(r.get("speedup_train"), "{:.2f}x"),
        _fmt(r.get("torch_compile_train_step_ms"), "{:.2f}"),
        _fmt(r.get("speedup_train_compile"), "{:.2f}x"), note))
  lines.append("")
  for dtype in ("float32", "bfloat16"):
    lines.append(_ratio_target(rows, dtype, "speedup_train", TORCH_RATIO,
                               f">= {TORCH_RATIO:g}x the notebook's eager PyTorch"))
    lines.append(_ratio_target(rows, dtype, "speedup_train_compile", None,
                               "faster than torch.compile"))
  return lines


def _ratio_target(rows: dict[str, dict[str, Any]], dtype: str, key: str, target: float | None,
                  goal: str) -> str:
  """The best same-run ratio of the notebook SA-CNN in ``dtype``: ``>= target``, or ``> 1``."""
  raced = {n: r[key] for n, r in rows.items()
           if r.get("dtype") == dtype and r.get(key) and _seed_race(r)}
  if not raced:
    return f"- {dtype}, {goal}: not measured (no {dtype} bench of the notebook SA-CNN raced it)"
  best = max(raced, key=raced.get)
  if target is None:
    verdict = "met" if raced[best] > 1 else "missed"
  else:
    verdict = "met" if raced[best] >= target else f"missed by {target - raced[best]:.2f}x"
  return f"- {dtype}, {goal}: best {raced[best]:.2f}x ({best}): {verdict}"


def _runs(runs: Path, pattern: str) -> list[Path]:
  return sorted(d for d in runs.iterdir() if d.is_dir() and re.fullmatch(pattern, d.name)
                and ((d / "config.json").exists() or (d / "summary.json").exists()))


def _read(path: Path) -> dict[str, Any]:
  return json.loads(path.read_text()) if path.exists() else {}


def _outcome(run: Path) -> str:
  """``finite``, ``NaN`` (the log says so) or ``did not finish``."""
  log = run.with_name(run.name + ".log")
  if log.exists() and _NAN_LINE.search(log.read_text(errors="replace")):
    return "NaN"
  return "finite" if (run / "summary.json").exists() else "did not finish"


def ten_epochs(runs: Path) -> list[str]:
  lines = _table("run", "dtype", "attention", "K", "epochs", "train wall s", "img/s", "accuracy",
                 "eval loss", "outcome")
  full: dict[str, list[tuple[str, dict[str, Any]]]] = {}
  for run in _runs(runs, r"(?!nan_).*"):
    config, summary = _read(run / "config.json"), _read(run / "summary.json")
    lines.append(_row(
        run.name, config.get("dtype", "-"), config.get("attention_impl", "-"),
        config.get("steps_per_call", "-"), _fmt(summary.get("epochs"), "{:g}"),
        _fmt(summary.get("train_wall_s"), "{:.1f}"),
        _fmt(summary.get("train_images_per_sec"), "{:,.0f}"),
        _fmt(summary.get("eval_accuracy"), "{:.2%}"), _fmt(summary.get("eval_loss"), "{:.4f}"),
        _outcome(run)))
    if (summary.get("epochs", 0) >= 10 and summary.get("recipe") == "notebook"
        and summary.get("model") == "sa_cnn"):
      full.setdefault(summary["dtype"], []).append((run.name, summary))
  lines.append("")
  for dtype in ("float32", "bfloat16"):
    if dtype not in full:
      lines.append(f"- {dtype}, 10 epochs <= {EPOCHS_WALL_S:g} s: no finished 10-epoch run "
                   "of the notebook SA-CNN")
      continue
    name, best = min(full[dtype], key=lambda ns: ns[1]["train_wall_s"])
    wall = best["train_wall_s"]
    verdict = "met" if wall <= EPOCHS_WALL_S else f"missed by {wall - EPOCHS_WALL_S:.1f} s"
    lines.append(f"- {dtype}, 10 epochs <= {EPOCHS_WALL_S:g} s: {wall:.1f} s ({name}): {verdict}; "
                 f"{wall / FLOOR_S:.1f}x the ~{FLOOR_S:g}-s floor")
  if "float32" in full and "bfloat16" in full:
    f32 = max(s["eval_accuracy"] for _, s in full["float32"])
    bf16 = max(s["eval_accuracy"] for _, s in full["bfloat16"])
    verdict = "met" if f32 - bf16 <= BF16_ACCURACY_GAP else "missed"
    lines.append(f"- bf16 accuracy within {100 * BF16_ACCURACY_GAP:g} point of float32: {bf16:.2%} against "
                 f"{f32:.2%} ({100 * (bf16 - f32):+.2f} points; one seed each): {verdict}")
  return lines


def nan_hunt(runs: Path) -> list[str]:
  first = _runs(runs, r"nan_\d+")
  outcomes = {run.name: _outcome(run) for run in first}
  steps = {run.name: _read(run / "summary.json").get("steps", 0) for run in first}
  finite = [n for n, o in outcomes.items() if o == "finite"]
  long_finite = [n for n in finite if steps[n] >= NAN_STEPS]
  nans = [n for n, o in outcomes.items() if o == "NaN"]
  lengths = sorted({steps[n] for n in finite})
  lines = [f"{len(first)} bf16 runs: {len(finite)} finished finite "
           f"({', '.join(map(str, lengths)) or 'no'} steps), {len(long_finite)} of them after "
           f">= {NAN_STEPS} steps; NaN: {', '.join(nans) or 'none'}; did not finish: "
           f"{', '.join(n for n, o in outcomes.items() if o == 'did not finish') or 'none'}"]
  for run in _runs(runs, r"nan_(deterministic|no_.*)"):
    lines.append(f"- control {run.name}: {_outcome(run)}")
  for log in sorted(runs.glob("nan_*_replay.log")):
    text = log.read_text(errors="replace")
    op = re.search(r"FloatingPointError: .{0,80}", text)
    ours = re.findall(r'jax_attn/[\w/]+\.py", line \d+', text)
    lines.append(f"- replay {log.stem}: {op.group(0) if op else 'no FloatingPointError'}"
                 f"{' at ' + ours[-1] if ours else ''}")
  verdict = "met" if len(long_finite) >= NAN_RUNS and not nans else "not met"
  lines += ["", f"- zero NaN in >= {NAN_RUNS} bf16 runs of >= {NAN_STEPS} steps: {verdict}"]
  return lines


def scaling_points(benches: dict[str, dict[str, Any]]) -> dict[str, list[tuple[int, dict]]]:
  """``{impl: [(image side, result), ...]}`` of phase D, by side."""
  points: dict[str, list[tuple[int, dict]]] = {}
  for name, result in benches.items():
    if match := _SCALE.fullmatch(name):
      points.setdefault(match[2], []).append((int(match[1]), result))
  return {impl: sorted(p, key=lambda sr: sr[0]) for impl, p in sorted(points.items())}


def growth(points: list[tuple[int, dict]], key: str) -> float | None:
  """The exponent a of ``key ~ N^a`` between the smallest and largest side measured."""
  measured = [(side * side, r[key]) for side, r in points if r.get(key)]
  if len(measured) < 2:
    return None
  (n0, v0), (n1, v1) = measured[0], measured[-1]
  return math.log(v1 / v0) / math.log(n1 / n0)


def scaling(benches: dict[str, dict[str, Any]]) -> list[str]:
  points = scaling_points(benches)
  lines = _table("image", "N positions", "attention", "step ms", "peak GiB", "note")
  for impl, measured in points.items():
    for side, r in measured:
      lines.append(_row(f"{side} px", f"{side * side:,}", impl, _fmt(r.get("train_step_ms"), "{:.2f}"),
                        _gib(r.get("peak_memory_bytes")), r.get("error", "")))
  lines.append("")
  for impl, measured in points.items():
    memory, time = growth(measured, "peak_memory_bytes"), growth(measured, "train_step_ms")
    failed = [f"{side} px ({r['error']})" for side, r in measured if "error" in r]
    lines.append(f"- {impl}: peak memory ~ N^{_fmt(memory, '{:.2f}')}, step time ~ "
                 f"N^{_fmt(time, '{:.2f}')}" + (f"; no result at {', '.join(failed)}" if failed else ""))
  return lines


def plot_scaling(benches: dict[str, dict[str, Any]], path: Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  points = scaling_points(benches)
  for impl, measured in points.items():
    failed = [f"{r['error'][:30]} at {side} px" for side, r in measured if "error" in r]
    label = impl + (f" ({'; '.join(failed)})" if failed else "")
    for ax, key, scale in ((axes[0], "train_step_ms", 1.0), (axes[1], "peak_memory_bytes", 2**-30)):
      xy = [(side * side, r[key] * scale) for side, r in measured if r.get(key)]
      if xy:
        ax.plot(*zip(*xy), marker="o", label=label)
  for ax, ylabel in zip(axes, ("train step (ms)", "peak device memory (GiB)")):
    ax.set(xscale="log", yscale="log", xlabel="positions N (image side squared)", ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
      ax.legend()
    else:
      ax.text(0.5, 0.5, "not reported by this backend", ha="center", transform=ax.transAxes)
  first = next((r for measured in points.values() for _, r in measured if "model" in r), {})
  fig.suptitle(f"{first.get('model', '?')}/{first.get('recipe', '?')}, batch "
               f"{first.get('batch_size', '?')}, {first.get('dtype', '?')}: attention paths by image size")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(runs: Path, benches: dict[str, dict[str, Any]]) -> str:
  """The markdown report of ``runs``, whose bench results are ``benches`` (``load_benches``)."""
  profile = runs / "profile_table.md"  # phase A's traces, tabulated by profile_table
  return "\n".join(
      ["## A. The race (train step; ratios from one bench call each)", ""] + race(benches)
      + ["", "Where the traced steps' time goes (`python -m jax_attn.tools.profile_table`):", "",
         profile.read_text().strip() if profile.exists() else "(no profile_table.md)"]
      + ["", "## B. The notebook recipe's 10 epochs", ""] + ten_epochs(runs)
      + ["", "## C. bf16 runs", ""] + nan_hunt(runs)
      + ["", "## D. Scaling with resolution", ""] + scaling(benches)) + "\n"


def main(argv: list[str]) -> int:
  args = [a for a in argv[1:] if not a.startswith("--plot=")]
  plot = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--plot=")), None)
  if len(args) != 1 or not Path(args[0]).is_dir():
    print("usage: python -m jax_attn.tools.speed_report RUNS_DIR [--plot=scaling.png]  (RUNS_DIR: "
          "experiments/gpu_speed.sh's runs.tgz unpacked)", file=sys.stderr)
    return 2
  runs = Path(args[0])
  benches = load_benches(runs)
  print(report(runs, benches), end="")
  if plot:
    plot_scaling(benches, Path(plot))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
