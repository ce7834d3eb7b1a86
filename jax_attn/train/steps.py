"""The per-device train and eval step bodies, and an evaluation over a whole split.

A body has the signature ``body(state, batch, axis_name)`` and averages (or sums) across
``axis_name`` itself when it is not None; ``parallel.Parallel.wrap`` makes it a jitted
single-device, pmapped or shard_mapped function.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax_attn.data import augment, pipeline
from jax_attn.data.splits import ArraySplit
from jax_attn.models import attention
from jax_attn.train.parallel import Parallel
from jax_attn.train.state import Lookahead, TrainState

# fold_in constant of the key that draws each example's alternating-flip coin (steps use 0..).
_FLIP_STREAM = 2**31 - 1


def make_train_body(model: nn.Module, tx: optax.GradientTransformation, augment_config: Any,
                    label_smoothing: float, steps_per_epoch: int = 1,
                    lookahead: Lookahead | None = None, attention_impl: str = "einsum"
                    ) -> Callable:
  """``body(state, batch, axis_name) -> (state, metrics)``: the one train step.

  Augmentation keys derive from each example's ``position`` in the global batch, so a run
  trains the same on any device layout; the alternating flip derives from the example's
  ``index`` in the split and the epoch (``step // steps_per_epoch``).
  """

  def body(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
    rng = jax.random.wrap_key_data(state.rng)
    step_key = jax.random.fold_in(rng, state.step)
    flips = None
    if augment_config.flip and augment_config.alternating_flip:
      flips = augment.alternating_flips(jax.random.fold_in(rng, _FLIP_STREAM), batch["index"],
                                        state.step // steps_per_epoch)
    images = augment.preprocess(batch["image"], augment_config, jax.random.fold_in(step_key, 0),
                                batch["position"], flips)
    labels = batch["label"]

    def loss_fn(params):
      mutable = ["batch_stats"] if state.batch_stats else False
      with attention.implementation(attention_impl):
        out = model.apply(state.variables(params), images, train=True,
                          rngs={"dropout": jax.random.fold_in(step_key, 1)}, mutable=mutable)
      logits, updates = out if mutable else (out, {})
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
      return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    batch_stats = updates.get("batch_stats", state.batch_stats)
    if axis_name is not None:
      grads, metrics, batch_stats = jax.lax.pmean((grads, metrics, batch_stats), axis_name)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(step=state.step + 1, batch_stats=batch_stats, opt_state=opt_state,
                          params=optax.apply_updates(state.params, param_updates))
    return (state if lookahead is None else lookahead.apply(state)), metrics

  return body


def make_eval_body(model: nn.Module, augment_config: Any, flip: bool = False, shift: int = 0,
                   attention_impl: str = "einsum") -> Callable:
  """``body(state, batch, axis_name) -> sums``: masked loss, correct and count sums.

  With ``flip`` or ``shift`` the logits are the mean over the test-time views
  (``augment.tta_logits``) and ``correct_no_flip`` counts the plain images' predictions.
  """
  def body(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
    images = augment.preprocess(batch["image"], augment_config)
    with attention.implementation(attention_impl):
      logits, plain = augment.tta_logits(
          lambda x: model.apply(state.variables(), x, train=False), images, flip=flip,
          shift=shift)
    mask, labels = batch["mask"], batch["label"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {"loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum(mask & (jnp.argmax(logits, -1) == labels)),
            "count": jnp.sum(mask)}
    if flip or shift:
      sums["correct_no_flip"] = jnp.sum(mask & (jnp.argmax(plain, -1) == labels))
    return jax.lax.psum(sums, axis_name) if axis_name is not None else sums

  return body


def evaluate(eval_step: Callable, state: Any, split: ArraySplit, parallel: Parallel
             ) -> dict[str, float]:
  """Loss and accuracy over every example of ``split`` exactly once."""
  outputs = [eval_step(state, batch) for batch in pipeline.prefetch(
      pipeline.eval_batches(split, parallel.global_batch), parallel.put_batch)]
  totals: dict[str, float] = {}
  for sums in parallel.to_host(outputs):
    for k, v in sums.items():
      totals[k] = totals.get(k, 0) + v.item()
  return eval_result(totals)


def eval_result(totals: dict[str, float]) -> dict[str, float]:
  """The eval step's summed ``loss_sum``/``correct``/``count`` as loss and accuracy
  (``eval_accuracy_no_flip`` too with test-time views)."""
  count = totals["count"]
  result = {"eval_loss": totals["loss_sum"] / count, "eval_accuracy": totals["correct"] / count,
            "eval_count": count}
  if "correct_no_flip" in totals:
    result["eval_accuracy_no_flip"] = totals["correct_no_flip"] / count
  return result
