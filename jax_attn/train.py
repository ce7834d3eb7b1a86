"""The train state, the per-device train/eval step bodies, and the training loop."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax_attn import augment as augment_lib
from jax_attn import data, input_pipeline, models
from jax_attn.parallel import Parallel


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; plain arrays, so it checkpoints as is."""
  step: jax.Array
  params: Any
  batch_stats: Any          # {} for models without batch norm
  opt_state: Any
  rng: jax.Array            # raw uint32 key data; step keys are fold_in(rng, step)
  slow: Any = dataclasses.field(default_factory=dict)  # lookahead's average ({} when off)


@dataclasses.dataclass(frozen=True)
class Lookahead:
  """Every ``every_steps`` steps the weights (params and batch-norm statistics) become
  ``slow = rho * slow + (1 - rho) * weights`` and training continues from ``slow``, with
  ``rho = decay ** every_steps * (step / total_steps) ** 3``: ~0 early (no averaging), rising to
  ``decay ** every_steps`` at the end; at ``total_steps`` the weights become ``slow`` (airbench's
  lookahead, an EMA over the last part of training that the evaluated weights equal)."""
  every_steps: int
  decay: float
  total_steps: int

  def rho(self, step: jax.Array) -> jax.Array:
    progress = step.astype(jnp.float32) / self.total_steps
    return jnp.where(step >= self.total_steps, 1.0, self.decay ** self.every_steps * progress ** 3)

  def apply(self, state: TrainState) -> TrainState:
    due = (state.step % self.every_steps == 0) | (state.step >= self.total_steps)
    rho = self.rho(state.step)
    fast = {"params": state.params, "batch_stats": state.batch_stats}
    mixed = jax.tree.map(lambda s, f: (rho * s + (1 - rho) * f).astype(f.dtype), state.slow, fast)
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(due, a, b), new, old)  # noqa: E731
    slow, fast = pick(mixed, state.slow), pick(mixed, fast)
    return state.replace(slow=slow, params=fast["params"], batch_stats=fast["batch_stats"])


# The one-off initialisation compiles at LLVM -O1 on the CPU: 30-88 % of the default -O2's
# time for the same bits (every preset: experiments/cpu_init_check.py).
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def create_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                 image_shape: tuple[int, int, int], lookahead: bool = False) -> TrainState:
  """The initial state of ``seed``, built by one compiled program.

  Run eagerly, ``model.init`` compiles each op and the dummy forward pass separately: 15 s for
  the seed SA-CNN on the project's CPU, against 4.4 s jitted (the forward pass is dead code).
  The bits are the eager init's, except where XLA folds an initializer's constants together:
  the tuned ViTs' class token and position table (``normal * 0.02``) move by <= 1e-8.
  """
  options = _INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
  build = functools.partial(initial_state, model, tx, seed, image_shape, lookahead)
  return jax.jit(build, compiler_options=options)()


def initial_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                  image_shape: tuple[int, int, int], lookahead: bool = False) -> TrainState:
  """``create_state``'s computation, traceable (run eagerly, it is the slow op-by-op init)."""
  root = jax.random.key(seed)
  variables = models.init_variables(model, jax.random.fold_in(root, 0), image_shape)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return TrainState(step=jnp.int32(0), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=jax.random.key_data(jax.random.fold_in(root, 1)),
                    slow={"params": params, "batch_stats": batch_stats} if lookahead else {})


def with_params(state: TrainState, params: Any) -> TrainState:
  """``state`` with new initial ``params`` (e.g. data-dependent whitening filters)."""
  slow = {**state.slow, "params": params} if state.slow else {}
  return state.replace(params=params, slow=slow)


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  return {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}


# fold_in constant of the key that draws each example's alternating-flip coin (steps use 0..).
_FLIP_STREAM = 2**31 - 1


def make_train_body(model: nn.Module, tx: optax.GradientTransformation,
                    augment: Any, label_smoothing: float, steps_per_epoch: int = 1,
                    lookahead: Lookahead | None = None) -> Callable:
  """``body(state, batch, axis_name) -> (state, metrics)``: the one per-device train step.

  With ``augment.alternating_flip`` the flips come from ``augment_lib.alternating_flips`` of
  the batch's example ``index`` and the epoch (``step // steps_per_epoch``).
  """

  def body(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
    rng = jax.random.wrap_key_data(state.rng)
    step_key = jax.random.fold_in(rng, state.step)
    flips = None
    if augment.flip and augment.alternating_flip:
      flips = augment_lib.alternating_flips(jax.random.fold_in(rng, _FLIP_STREAM), batch["index"],
                                            state.step // steps_per_epoch)
    images = augment_lib.preprocess(batch["image"], augment, jax.random.fold_in(step_key, 0),
                                    batch["position"], flips)
    dropout_key = jax.random.fold_in(step_key, 1)
    if axis_name is not None and getattr(model, "batch_axis", None) is None:
      # a model that does not know it is split: at least different masks per device
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
    if lookahead is not None:
      new_state = lookahead.apply(new_state)
    return new_state, metrics

  return body


def make_eval_body(model: nn.Module, augment: Any,
                   flip: bool = False, shift: int = 0) -> Callable:
  """``body(state, batch, axis_name) -> sums``: masked loss/correct/count sums.

  With ``flip`` and/or ``shift`` the logits are the weighted mean over the test-time views
  of ``augment.tta_views`` (the image mirrored, moved by +-shift pixels), and
  ``correct_no_flip`` counts the predictions of the plain image alone.
  """
  views = augment_lib.tta_views(flip, shift)

  def body(state: TrainState, batch: dict[str, jax.Array], axis_name: str | None):
    images = augment_lib.preprocess(batch["image"], augment)
    variables = _variables(state, state.params)
    logits = plain = model.apply(variables, images, train=False)
    if len(views) > 1:
      logits = views[0][0] * plain
      for weight, moved, mirrored in views[1:]:
        view = augment_lib.translate(images, moved, moved)
        logits += weight * model.apply(variables, view[:, :, ::-1] if mirrored else view, train=False)
    mask, labels = batch["mask"], batch["label"]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {"loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
            "correct": jnp.sum(mask & (jnp.argmax(logits, -1) == labels)),
            "count": jnp.sum(mask)}
    if len(views) > 1:
      sums["correct_no_flip"] = jnp.sum(mask & (jnp.argmax(plain, -1) == labels))
    return jax.lax.psum(sums, axis_name) if axis_name is not None else sums

  return body


def evaluate(eval_step: Callable, state: Any, split: data.ArraySplit, parallel: Parallel
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
  return eval_result(totals)


def eval_result(totals: dict[str, float]) -> dict[str, float]:
  """The eval step's summed ``loss_sum``/``correct``/``count`` as loss and accuracy."""
  count = totals["count"]
  result = {"eval_loss": totals["loss_sum"] / count, "eval_accuracy": totals["correct"] / count,
            "eval_count": count}
  if "correct_no_flip" in totals:
    result["eval_accuracy_no_flip"] = totals["correct_no_flip"] / count
  return result
