"""The one metrics writer: metrics.jsonl, config.json, summary.json and progress output.

Only process 0 writes; every process may call it.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax

try:
  import tqdm
except ImportError:  # tqdm is optional: plain log lines instead
  tqdm = None


def _jsonable(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsWriter:
  """Appends one JSON object per log step / epoch; writes config and summary files."""

  def __init__(self, workdir: Path):
    self.workdir = workdir
    self.is_main = jax.process_index() == 0  # the workdir is made on the first write
    self._bar = None

  def log(self, message: str) -> None:
    if not self.is_main:
      return
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def write_json(self, name: str, content: dict[str, Any]) -> None:
    if self.is_main:
      self.workdir.mkdir(parents=True, exist_ok=True)
      path = self.workdir / name
      tmp = path.with_suffix(".tmp")
      tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
      tmp.replace(path)

  def truncate_after(self, step: int) -> None:
    """Drops records past ``step`` (written after the checkpoint a resume starts from)."""
    path = self.workdir / "metrics.jsonl"
    if self.is_main and path.exists():
      kept = [line for line in path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= step]
      path.write_text("".join(line + "\n" for line in kept))

  def write_metrics(self, record: dict[str, Any]) -> None:
    if self.is_main:
      self.workdir.mkdir(parents=True, exist_ok=True)
      with open(self.workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

  def start_progress(self, total: int, initial: int) -> None:
    """A tqdm bar on a terminal; elsewhere the periodic log lines are the progress."""
    if self.is_main and tqdm is not None and sys.stderr.isatty():
      self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
    self._last = (time.perf_counter(), initial)

  def progress(self, step: int, total: int, loss: float, images_per_sec: float) -> None:
    if not self.is_main:
      return
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_sec:,.0f}")
      return
    now, (then, then_step) = time.perf_counter(), self._last
    rate = (step - then_step) / max(now - then, 1e-9)
    eta = (total - step) / rate if rate > 0 else float("nan")
    self.log(f"step {step}/{total}  loss {loss:.4f}  {images_per_sec:,.0f} img/s  ETA {eta:.0f}s")
    self._last = (now, step)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
