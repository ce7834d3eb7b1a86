"""Batches from in-memory splits, fed to devices already sharded, with prefetch.

The order of epoch ``e`` is a pure function of ``(seed, e)``, so a run resumed at
any step sees exactly the batches an uninterrupted run would, without replaying.
Each process takes its own contiguous slice of every global batch.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from jax_attn.data.splits import ArraySplit
from jax_attn.errors import DataError

Batch = dict[str, np.ndarray]


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
  """The permutation of ``range(size)`` used in ``epoch``."""
  return np.random.default_rng([seed, epoch]).permutation(size)


def steps_per_epoch(size: int, global_batch: int) -> int:
  """Full batches per epoch (the ragged remainder is left out of training)."""
  if size < global_batch:
    raise DataError(f"the training split has {size} examples, fewer than --batch_size="
                    f"{global_batch}: use a smaller batch or a larger split")
  return size // global_batch


def process_slice(global_batch: int) -> slice:
  per_process = global_batch // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def train_batches(split: ArraySplit, *, seed: int, epoch: int, global_batch: int,
                  first_step: int = 0) -> Iterator[Batch]:
  """This process's slices of the global batches ``first_step, ...`` of ``epoch``.

  ``index`` is each example's index in the split (the alternating flip derives from it),
  ``position`` its index in the global batch: the augmentation
  keys derive from it, so they do not depend on the device layout.
  """
  order = epoch_order(seed, epoch, len(split))
  mine = process_slice(global_batch)
  positions = np.arange(global_batch, dtype=np.int32)[mine]
  for step in range(first_step, steps_per_epoch(len(split), global_batch)):
    index = order[step * global_batch:(step + 1) * global_batch][mine]
    yield {"image": split.images[index], "label": split.labels[index], "position": positions,
           "index": index.astype(np.int32)}


def eval_indices(size: int, global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """``(index, mask)`` of this process's slice of each eval batch: every example exactly
  once, in order; the last batch is padded (with example 0) and masked."""
  mine = process_slice(global_batch)
  for start in range(0, size, global_batch):
    index = np.arange(start, start + global_batch)[mine]
    valid = index < size
    yield np.where(valid, index, 0), valid


def eval_batches(split: ArraySplit, global_batch: int) -> Iterator[Batch]:
  """The batches of ``eval_indices``."""
  for index, mask in eval_indices(len(split), global_batch):
    yield {"image": split.images[index], "label": split.labels[index], "mask": mask}


def prefetch(batches: Iterable[Batch], put: Callable[[Batch], Any], size: int = 2) -> Iterator[Any]:
  """Puts batches on devices from a background thread, ``size`` ahead of the consumer."""
  done = object()
  slots: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce() -> None:
    try:
      for batch in batches:
        if stop.is_set():
          return
        slots.put(put(batch))
      slots.put(done)
    except BaseException as e:  # hand the failure to the consumer
      slots.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = slots.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        slots.get_nowait()
      except queue.Empty:
        thread.join(timeout=0.01)
