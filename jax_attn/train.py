"""The train state, the per-device train/eval step bodies, and the training loop."""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax_attn import augment as augment_lib
from jax_attn import datasets, input_pipeline, models
from jax_attn.parallel import Parallel


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; plain arrays, so it checkpoints as is."""
  step: jax.Array
  params: Any
  batch_stats: Any          # {} for models without batch norm
  opt_state: Any
  rng: jax.Array            # raw uint32 key data; step keys are fold_in(rng, step)


def create_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                 image_shape: tuple[int, int, int]) -> TrainState:
  root = jax.random.key(seed)
  variables = models.init_variables(model, jax.random.fold_in(root, 0), image_shape)
  params = variables["params"]
  return TrainState(step=jnp.int32(0), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(root, 1)))


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  return {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}


def make_train_body(model: nn.Module, tx: optax.GradientTransformation,
                    augment: augment_lib.AugmentConfig, label_smoothing: float) -> Callable:
  """``body(state, batch, axis_name) -> (state, metrics)``: the one per-device train step."""

  def body(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images = augment_lib.preprocess(batch["image"], augment, jax.random.fold_in(step_key, 0),
                                    batch["position"])
    dropout_key = jax.random.fold_in(step_key, 1)
    if axis_name is not None:
      dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    labels = batch["label"]

    def loss_fn(params):
      mutable = ["batch_stats"] if state.batch_stats else False
      out = model.apply(_variables(state, params), images, train=True,
                        rngs={"dropout": dropout_key}, mutable=mutable)
      logits, updates = out if mutable else (out, {})
      targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
      return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    batch_stats = updates.get("batch_stats", state.batch_stats)
    if axis_name is not None:
      grads, metrics, batch_stats = jax.lax.pmean((grads, metrics, batch_stats), axis_name)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, batch_stats=batch_stats, opt_state=opt_state,
                              params=optax.apply_updates(state.params, param_updates))
    return new_state, metrics

  return body


def make_eval_body(model: nn.Module, augment: augment_lib.AugmentConfig,
                   flip: bool = False) -> Callable:
  """``body(state, batch, axis_name) -> sums``: masked loss/correct/count sums.

  With ``flip`` the logits are the mean over each image and its mirror image
  (test-time augmentation), and ``correct_no_flip`` counts the plain predictions.
  """

  def body(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
    images = augment_lib.preprocess(batch["image"], augment)
    variables = _variables(state, state.params)
    logits = plain = model.apply(variables, images, train=False)
    if flip:
      mirrored = model.apply(variables, images[:, :, ::-1], train=False)
      logits = (plain + mirrored) / 2
    mask, labels = batch["mask"], batch["label"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {"loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum(mask & (jnp.argmax(logits, -1) == labels)),
            "count": jnp.sum(mask)}
    if flip:
      sums["correct_no_flip"] = jnp.sum(mask & (jnp.argmax(plain, -1) == labels))
    return jax.lax.psum(sums, axis_name) if axis_name is not None else sums

  return body


def evaluate(eval_step: Callable, state: Any, split: datasets.ArraySplit, parallel: Parallel
             ) -> dict[str, float]:
  """Loss and accuracy over every example of ``split`` exactly once.

  ``eval_accuracy_no_flip`` is added when the eval step uses flip test-time augmentation.
  """
  totals: dict[str, float] = {}
  outputs = [eval_step(state, batch) for batch in input_pipeline.prefetch(
      input_pipeline.eval_batches(split, parallel.global_batch), parallel.put_batch)]
  for sums in parallel.to_host(outputs):
    for k, v in sums.items():
      totals[k] = totals.get(k, 0) + v.item()
  count = totals["count"]
  result = {"eval_loss": totals["loss_sum"] / count, "eval_accuracy": totals["correct"] / count,
            "eval_count": count}
  if "correct_no_flip" in totals:
    result["eval_accuracy_no_flip"] = totals["correct_no_flip"] / count
  return result
