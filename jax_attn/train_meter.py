"""The run's training meter: loss and accuracy means per log window and per epoch, the train wall
time and the images seen. It travels in checkpoints, so a resumed run's epoch means, images/s
and summary cover the whole run, not only the part after the resume."""
from __future__ import annotations

from typing import Any, Callable

import ml_collections
import numpy as np

from jax_attn.metrics import MetricsWriter


class TrainMeter:
  """Accumulates the step metrics fetched from the devices, writes their records and moves
  the progress bar (to ``end_step``)."""

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

  def window(self, values: list[dict[str, Any]], last_step: int, epoch: int,
             elapsed: float) -> None:
    """Adds the finite metrics of the steps up to ``last_step`` (``elapsed`` seconds of
    training) and writes their record."""
    batch = self.batch_size
    for metrics in values:
      self.sums["loss_sum"] += float(metrics["loss"]) * batch
      self.sums["correct_sum"] += float(metrics["accuracy"]) * batch
      self.sums["count"] += batch
    self.train_wall += elapsed
    self.images_seen += batch * len(values)
    loss = float(np.mean([m["loss"] for m in values]))
    images_per_sec = batch * len(values) / max(elapsed, 1e-9)
    self.writer.write_metrics(self._record(
        last_step, epoch, loss, float(np.mean([m["accuracy"] for m in values])), images_per_sec))
    self.writer.progress(last_step, self.end_step, loss, images_per_sec)

  def close_epoch(self, step: int, epoch: int) -> dict[str, Any]:
    """The epoch's closing record (its train means; evaluation to be filled in), and a fresh
    epoch."""
    count = max(self.sums["count"], 1.0)
    record = self._record(step, epoch, self.sums["loss_sum"] / count,
                          self.sums["correct_sum"] / count, self.images_per_sec)
    self.sums = {k: 0.0 for k in self.sums}
    return record

  def _record(self, step: int, epoch: int, loss: float, accuracy: float,
              images_per_sec: float) -> dict[str, Any]:
    """A metrics.jsonl record of the training figures at ``step``; no evaluation yet."""
    return {"step": step, "epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy,
            "eval_loss": None, "eval_accuracy": None,
            "learning_rate": float(self.schedule(step - 1)),
            "images_per_sec": images_per_sec, "wall_s": self.train_wall}


def tta_note(evaluation: dict[str, float], config: ml_collections.ConfigDict) -> str:
  """Says that the accuracy used test-time augmentation (which views), with the plain figure."""
  if "eval_accuracy_no_flip" not in evaluation:
    return ""
  views = " and ".join((["flip"] if config.eval_flip else [])
                       + ([f"+-{config.eval_translate} px"] if config.eval_translate else []))
  return f" with {views} test-time augmentation ({evaluation['eval_accuracy_no_flip']:.2%} without)"
