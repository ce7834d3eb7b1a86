"""What a run writes and shows: metrics.jsonl, TensorBoard event files, config.json,
summary.json and progress (``MetricsWriter``), and the running means of training
(``TrainMeter``). Only process 0 writes; every process may call them.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

try:
  import tqdm
except ImportError:  # tqdm is optional: plain log lines instead
  tqdm = None


# TensorBoard tags, from the keys of a metrics.jsonl record, by its ``kind``: a ``window`` record
# (every --log_every_steps) and the epoch's closing ``epoch`` record (or the ``end`` record of a
# run stopped inside an epoch) share a step, and TensorBoard keeps one point per tag and step,
# so a closing record's means go to epoch/* tags; its learning rate is the window record's.
_WINDOW_TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
                "learning_rate": "train/learning_rate", "images_per_sec": "train/images_per_sec"}
_EPOCH_TAGS = {"train_loss": "epoch/train_loss", "train_accuracy": "epoch/train_accuracy",
               "images_per_sec": "epoch/images_per_sec"}  # images/s: the run's mean so far
_EVAL_TAGS = {"eval_loss": "eval/loss", "eval_accuracy": "eval/accuracy",
              "eval_accuracy_no_flip": "eval/accuracy_no_flip"}
TENSORBOARD_DIR = "tensorboard"


def _summary_writer_class() -> Any:
  """``tensorboardX.SummaryWriter``, or None where tensorboardX is not installed.

  tensorboardX's writer module imports torch whenever torch is installed, only to accept torch
  tensors; in this JAX process that costs seconds and ~200 MB, so an unimported torch is hidden
  (``sys.modules["torch"] = None`` makes ``import torch`` fail) for the length of the import.
  """
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # type: ignore[assignment]
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    return None
  finally:
    if hide_torch and "torch" in sys.modules and sys.modules["torch"] is None:
      del sys.modules["torch"]
  return SummaryWriter


def _jsonable(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsWriter:
  """Appends one JSON object per log step / epoch; writes config and summary files.

  Each record also goes to TensorBoard scalars in ``workdir/tensorboard/`` (tensorboardX; run
  without it, metrics.jsonl alone is written). A resumed run writes a new event file that starts
  with tensorboardX's ``purge_step`` (the resumed step + 1): TensorBoard drops the points of the
  earlier files at or past that step, as ``truncate_after`` drops them from metrics.jsonl, so
  the steps redone after a resume are not shown twice. (TensorBoard's data server also drops,
  per tag, the points at or past any step written again; the purge event does it for the
  Python loader and for tags that get no new point.)
  """

  def __init__(self, workdir: Path):
    self.workdir = workdir
    self.is_main = jax.process_index() == 0  # the workdir is made on the first write
    self._bar = None
    self._tensorboard: Any = None  # a tensorboardX.SummaryWriter, made on the first record
    self._tensorboard_missing = False
    self._purge_step: int | None = None  # set by a resume

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
    """Drops the records written after the checkpoint a resume starts from (at ``step``: a
    run stopped there by --max_steps wrote its ``end`` record after it)."""
    path = self.workdir / "metrics.jsonl"
    if self.is_main and path.exists():
      records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      kept = [r for r in records if r["step"] < step or r["step"] == step and r["kind"] != "end"]
      path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    self._purge_step = step + 1  # the next event file hides TensorBoard's points past ``step``
    self._close_tensorboard()

  def write_metrics(self, record: dict[str, Any]) -> None:
    if self.is_main:
      self.workdir.mkdir(parents=True, exist_ok=True)
      with open(self.workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
      self._write_tensorboard(record)

  def _write_tensorboard(self, record: dict[str, Any]) -> None:
    """The record's scalars at its step; a closing record flushes the event file."""
    writer = self._tensorboard_writer()
    if writer is None:
      return
    step = int(record["step"])
    epoch_end = record["kind"] != "window"
    tags = {**(_EPOCH_TAGS if epoch_end else _WINDOW_TAGS), **_EVAL_TAGS}
    for key, tag in tags.items():
      value = record.get(key)
      if value is not None and math.isfinite(value):  # metrics.jsonl has None for these
        writer.add_scalar(tag, float(value), step)
    if epoch_end:
      writer.flush()

  def _tensorboard_writer(self) -> Any:
    if self._tensorboard is None and not self._tensorboard_missing:
      summary_writer = _summary_writer_class()
      if summary_writer is None:
        self._tensorboard_missing = True
        self.log("tensorboardX is not installed: no TensorBoard event files, metrics.jsonl only "
                 "(pip install tensorboardX)")
      else:
        # tensorboardX names the file events.out.tfevents.SECONDS.HOST and opens it "wb": the
        # nanosecond suffix keeps a resume within the same second from overwriting the file
        # before it, and keeps the files in the order TensorBoard reads them (by name).
        self._tensorboard = summary_writer(str(self.workdir / TENSORBOARD_DIR),
                                           purge_step=self._purge_step,
                                           filename_suffix=f".{time.time_ns()}")
    return self._tensorboard

  def _close_tensorboard(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()  # flushes
      self._tensorboard = None

  def start_progress(self, total: int, initial: int) -> None:
    """A tqdm bar on a terminal; elsewhere the periodic log lines are the progress."""
    if self.is_main and tqdm is not None and sys.stderr.isatty():
      self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

  def progress(self, step: int, total: int, loss: float, images_per_sec: float,
               eta: float) -> None:
    """The training's position: ``eta`` seconds left at ``images_per_sec``."""
    if not self.is_main:
      return
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_sec:,.0f}")
      return
    self.log(f"step {step}/{total}  loss {loss:.4f}  {images_per_sec:,.0f} img/s  ETA {eta:.0f}s")

  def close(self) -> None:
    self._close_tensorboard()
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class TrainMeter:
  """Accumulates the step metrics fetched from the devices, writes their records and moves
  the progress bar (to ``end_step``). Throughput and ETA leave out the steps that compiled (as
  clu's ``ReportProgress``): a run's first call."""

  def __init__(self, writer: MetricsWriter, schedule: Callable[[int], Any], batch_size: int,
               end_step: int):
    self.writer = writer
    self.schedule = schedule
    self.batch_size = batch_size
    self.end_step = end_step
    self.sums = {"loss_sum": 0.0, "correct_sum": 0.0, "count": 0.0}  # this epoch's
    self.train_wall = 0.0
    self.images_seen = 0

  @property
  def images_per_sec(self) -> float:
    """The run's mean training throughput so far."""
    return self.images_seen / max(self.train_wall, 1e-9)

  def checkpoint_tree(self) -> dict[str, Any]:
    """What a checkpoint keeps of the meter (float64 leaves)."""
    return {"epoch_sums": {k: np.float64(v) for k, v in self.sums.items()},
            "totals": {"train_wall": np.float64(self.train_wall),
                       "images_seen": np.float64(self.images_seen)}}

  def restore(self, tree: dict[str, Any]) -> None:
    self.sums = {k: float(v) for k, v in tree["epoch_sums"].items()}
    self.train_wall = float(tree["totals"]["train_wall"])
    self.images_seen = int(tree["totals"]["images_seen"])

  def window(self, values: list[dict[str, Any]], last_step: int, epoch: int, elapsed: float,
             compiled: int = 0) -> None:
    """Adds the finite metrics of the steps up to ``last_step`` and writes their ``window``
    record; ``elapsed`` seconds trained the steps after the first ``compiled`` ones."""
    batch, timed = self.batch_size, len(values) - compiled
    for metrics in values:
      self.sums["loss_sum"] += float(metrics["loss"]) * batch
      self.sums["correct_sum"] += float(metrics["accuracy"]) * batch
      self.sums["count"] += batch
    self.train_wall += elapsed
    self.images_seen += batch * timed
    loss = float(np.mean([m["loss"] for m in values]))
    images_per_sec = batch * timed / elapsed if timed and elapsed > 0 else self.images_per_sec
    self.writer.write_metrics(self._record(
        "window", last_step, epoch, loss, float(np.mean([m["accuracy"] for m in values])),
        images_per_sec))
    eta = (self.end_step - last_step) * batch / max(self.images_per_sec, 1e-9)
    self.writer.progress(last_step, self.end_step, loss, images_per_sec, eta)

  def close_epoch(self, step: int, epoch: int, ended: bool = False) -> dict[str, Any]:
    """The epoch's closing record (its train means; evaluation to be filled in) and a fresh
    epoch; ``ended``: the ``end`` record of a run stopped inside the epoch, whose sums stay (a
    resumed run goes on with them)."""
    count = max(self.sums["count"], 1.0)
    record = self._record("end" if ended else "epoch", step, epoch,
                          self.sums["loss_sum"] / count, self.sums["correct_sum"] / count,
                          self.images_per_sec)
    if not ended:
      self.sums = {k: 0.0 for k in self.sums}
    return record

  def _record(self, kind: str, step: int, epoch: int, loss: float, accuracy: float,
              images_per_sec: float) -> dict[str, Any]:
    """A metrics.jsonl record of the training figures at ``step``; no evaluation yet."""
    return {"kind": kind, "step": step, "epoch": epoch + 1, "train_loss": loss,
            "train_accuracy": accuracy, "eval_loss": None, "eval_accuracy": None,
            "learning_rate": float(self.schedule(step - 1)),
            "images_per_sec": images_per_sec, "wall_s": self.train_wall}


def tta_note(evaluation: dict[str, float], config: ml_collections.ConfigDict) -> str:
  """Says that the accuracy used test-time augmentation (which views), with the plain figure."""
  if "eval_accuracy_no_flip" not in evaluation:
    return ""
  views = " and ".join((["flip"] if config.eval_flip else [])
                       + ([f"+-{config.eval_translate} px"] if config.eval_translate else []))
  return f" with {views} test-time augmentation ({evaluation['eval_accuracy_no_flip']:.2%} without)"
