"""Optimizers, learning-rate schedules and parameter groups, all from optax."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "one_cycle", "warmup_linear")
# Parameter groups (``param_groups``): batch-norm biases, and the whitening layer's frozen
# filters and briefly trained bias; everything else is "default".
BN_BIAS, WHITEN_KERNEL, WHITEN_BIAS, DEFAULT = "bn_bias", "whiten_kernel", "whiten_bias", "default"


def make_schedule(name: str, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                  start_factor: float = 0.0, final_factor: float = 0.0) -> optax.Schedule:
  """``constant`` (reference), ``warmup_cosine`` (linear warm-up from 0, cosine to 0),
  ``one_cycle``, or ``warmup_linear``: linear from ``start_factor * lr`` to ``lr`` over the
  warm-up, then linear to ``final_factor * lr`` at the last step (airbench's triangle)."""
  total_steps = max(total_steps, 1)
  warmup_steps = min(warmup_steps, total_steps - 1)
  if name == "constant":
    return optax.constant_schedule(learning_rate)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps)
  if name == "one_cycle":
    return optax.cosine_onecycle_schedule(total_steps, learning_rate)
  if name == "warmup_linear":
    return optax.join_schedules(
        [optax.linear_schedule(start_factor * learning_rate, learning_rate, warmup_steps),
         optax.linear_schedule(learning_rate, final_factor * learning_rate,
                               max(total_steps - 1 - warmup_steps, 1))], [warmup_steps])
  raise ValueError(f"schedule {name!r} is unknown: use one of {SCHEDULES}")


def param_groups(params: Any, batch_stats: Any) -> Any:
  """The group of every parameter: ``bn_bias`` for a batch norm's bias (a module that also
  keeps running statistics), ``whiten_kernel`` / ``whiten_bias`` for the ``whiten`` layer's,
  else ``default``."""
  normalised = {path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(batch_stats)[0]}

  def group(path, _) -> str:
    names = tuple(getattr(k, "key", str(k)) for k in path)
    if names[-2:] == ("whiten", "kernel"):
      return WHITEN_KERNEL
    if names[-2:] == ("whiten", "bias"):
      return WHITEN_BIAS
    if names[-1] == "bias" and tuple(path[:-1]) in normalised:
      return BN_BIAS
    return DEFAULT

  return jax.tree_util.tree_map_with_path(group, params)


def _base(name: str, schedule: optax.Schedule, weight_decay: float, momentum: float
          ) -> optax.GradientTransformation:
  if name == "adam":
    tx = optax.adam(schedule)
  elif name == "adamw":
    return optax.adamw(schedule, weight_decay=weight_decay)
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=momentum, nesterov=True)
  else:
    raise ValueError(f"optimizer {name!r} is unknown: use one of {OPTIMIZERS}")
  # Coupled L2 (through the momentum, scaled by the schedule), as torch.optim does.
  return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, grad_clip_norm: float = 0.0,
                   bias_lr_scale: float = 1.0, whiten_bias_steps: int | None = None,
                   groups: Any = None) -> optax.GradientTransformation:
  """Adam (reference), AdamW or SGD with Nesterov momentum; optional global-norm clipping.

  With ``groups`` (``param_groups``): batch-norm biases learn at ``bias_lr_scale`` times the
  rate with weight decay divided by it (the same decay per step), the whitening filters are
  frozen and the whitening bias learns for its first ``whiten_bias_steps`` steps only.
  """
  tx = _base(name, schedule, weight_decay, momentum)
  if groups is not None:
    labels = set(jax.tree.leaves(groups))
    scaled = lambda step: schedule(step) * bias_lr_scale  # noqa: E731
    brief = lambda step: jnp.where(step < (whiten_bias_steps or 0), schedule(step), 0.0)  # noqa: E731
    transforms = {DEFAULT: tx, WHITEN_KERNEL: optax.set_to_zero(),
                  BN_BIAS: _base(name, scaled, weight_decay / bias_lr_scale, momentum),
                  WHITEN_BIAS: _base(name, brief, weight_decay, momentum)}
    tx = optax.multi_transform({k: v for k, v in transforms.items() if k in labels}, groups)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
