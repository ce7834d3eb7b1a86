"""Many steps per dispatch (``--steps_per_call=K``): the splits live on the devices, and one
call runs up to K train steps as a ``fori_loop`` over the ordinary step body, or a whole
evaluation.

Why: on a fast accelerator a small model's step is shorter than Python's dispatch plus a
host-to-device batch copy; here the host sends only each call's example indices (4 bytes per
example) and the devices gather the images themselves. The indices are the ones
``input_pipeline`` would feed one batch at a time (the epoch's permutation stays the host's
NumPy one), so K changes only how the same steps are dispatched.

A call never crosses a multiple of K, a log, checkpoint or epoch boundary, or the last step
(``call_end``), so every checkpoint falls between calls and a resumed run makes exactly the
calls an uninterrupted one makes. Shorter calls pass the same ``[batch, K]`` block with its
unused columns marked invalid, and the loop runs a traced number of steps, so one compiled
program serves every call length.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jax_attn.data import pipeline
from jax_attn.data.splits import ArraySplit
from jax_attn.train.parallel import Parallel

Block = dict[str, np.ndarray]


def resident(split: ArraySplit, parallel: Parallel) -> dict[str, jax.Array]:
  """The split's images and labels on every device (CIFAR-10's training split: 138 MB)."""
  return parallel.replicate({"image": split.images, "label": split.labels})


def call_end(step: int, *, steps_per_call: int, steps_per_epoch: int, end_step: int,
             every: tuple[int, ...]) -> int:
  """The step a call starting at ``step`` ends at: at most ``steps_per_call`` steps, stopping
  at the next multiple of K, of each of ``every`` (log and checkpoint intervals), the epoch's
  end and ``end_step``."""
  stops = [end_step, (step // steps_per_epoch + 1) * steps_per_epoch]
  stops += [(step // n + 1) * n for n in (steps_per_call, *every)]
  return min(stops)


def train_blocks(size: int, *, seed: int, epoch: int, global_batch: int, first_step: int,
                 steps_per_call: int, ends: Callable[[int], int]) -> Iterator[tuple[int, Block]]:
  """``(steps, block)`` per call of ``epoch`` from ``first_step``: this process's example
  indices, batch positions and ``valid`` (the first ``steps`` columns) as ``[local batch,
  steps_per_call]`` arrays (batch-major, so ``put_batch`` splits them as it splits a batch)."""
  order = pipeline.epoch_order(seed, epoch, size)
  mine = pipeline.process_slice(global_batch)
  positions = np.arange(global_batch, dtype=np.int32)[mine]
  step, last = first_step, pipeline.steps_per_epoch(size, global_batch)
  epoch_start = epoch * last
  while step < last:
    end = min(ends(epoch_start + step) - epoch_start, last)
    if end <= step:  # the run ends inside this epoch (--max_steps)
      return
    index = np.zeros((len(positions), steps_per_call), np.int32)
    index[:, :end - step] = order[step * global_batch:end * global_batch].reshape(
        end - step, global_batch)[:, mine].T
    valid = np.broadcast_to(np.arange(steps_per_call) < end - step, index.shape)
    yield end - step, {"index": index, "valid": valid,
                       "position": np.repeat(positions[:, None], steps_per_call, 1)}
    step = end


def dispatches(blocks: Iterator[tuple[int, Block]], parallel: Parallel, call: Callable,
               data: dict[str, jax.Array]) -> Iterator[tuple[int, Callable, tuple[Any, ...]]]:
  """``(steps, call, arguments after the state)`` per block, the blocks put on the devices
  ahead of use by ``pipeline.prefetch``."""
  put = lambda item: (item[0], parallel.put_batch(item[1]))  # noqa: E731
  return ((steps, call, (data, block)) for steps, block in pipeline.prefetch(blocks, put))


def per_step(ends: list[int], outputs: list[dict[str, Any]]) -> tuple[list[int], list[dict]]:
  """Host metrics of single steps and of calls (one row per step, ``steps`` rows used) as
  ``(step numbers, one metrics dict per step)``; ``ends`` holds the step each output ended at."""
  steps, values = [], []
  for end, metrics in zip(ends, outputs):
    if np.ndim(metrics["loss"]) == 0:
      steps.append(end)
      values.append(metrics)
      continue
    count = int(metrics["steps"])
    steps += range(end - count + 1, end + 1)
    values += [{k: v[i] for k, v in metrics.items() if k != "steps"} for i in range(count)]
  return steps, values


def eval_block(size: int, global_batch: int) -> Block:
  """Every eval batch of ``pipeline.eval_batches`` as one ``[local batch, batches]``
  block of indices and masks."""
  index, mask = zip(*(pipeline.eval_indices(size, global_batch)))
  return {"index": np.stack(index, 1).astype(np.int32), "mask": np.stack(mask, 1)}


def _gather(data: dict[str, jax.Array], block: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {**block, "image": data["image"][block["index"]], "label": data["label"][block["index"]]}


def scan_train(body: Callable) -> Callable:
  """``body(state, batch, axis) -> (state, metrics)`` as ``(state, data, block, axis) ->
  (state, metrics)``: the block's valid steps in a loop; each metric has one row per column
  of the block (rows past ``metrics["steps"]`` are zero)."""

  def call(state: Any, data: dict[str, jax.Array], block: dict[str, jax.Array],
           axis_name: str | None):
    steps = jnp.sum(block["valid"][0], dtype=jnp.int32)
    column = lambda i: _gather(data, {  # noqa: E731
        k: block[k][:, i] for k in ("index", "position")})
    shapes = jax.eval_shape(lambda s: body(s, column(0), axis_name)[1], state)
    rows = jax.tree.map(lambda x: jnp.zeros(block["valid"].shape[1:] + x.shape, x.dtype), shapes)

    def one(i, carry):
      state, rows = carry
      state, metrics = body(state, column(i), axis_name)
      return state, jax.tree.map(lambda r, m: r.at[i].set(m), rows, metrics)

    state, rows = jax.lax.fori_loop(0, steps, one, (state, rows))
    return state, {**rows, "steps": steps}

  return call


def scan_eval(body: Callable) -> Callable:
  """``body(state, batch, axis) -> sums`` as ``(state, data, block, axis) -> sums`` over
  every batch of the block."""

  def call(state: Any, data: dict[str, jax.Array], block: dict[str, jax.Array],
           axis_name: str | None):
    steps = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), block)
    sums = jax.lax.map(lambda b: body(state, _gather(data, b), axis_name), steps)
    return jax.tree.map(lambda x: jnp.sum(x, 0), sums)

  return call
