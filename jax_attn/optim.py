"""Optimizers and learning-rate schedules, all from optax."""
from __future__ import annotations

import optax

from jax_attn.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine", "one_cycle")


def make_schedule(name: str, learning_rate: float, total_steps: int,
                  warmup_steps: int = 0) -> optax.Schedule:
  """``constant`` (reference), ``warmup_cosine`` (linear warm-up, cosine to 0) or ``one_cycle``."""
  if learning_rate <= 0:
    raise UserError(f"--learning_rate={learning_rate} must be positive")
  if name == "constant":
    return optax.constant_schedule(learning_rate)
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(warmup_steps, total_steps - 1), max(total_steps, 1))
  if name == "one_cycle":
    return optax.cosine_onecycle_schedule(max(total_steps, 1), learning_rate)
  raise UserError(f"--schedule={name} is unknown: use one of {', '.join(SCHEDULES)}")


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, grad_clip_norm: float = 0.0
                   ) -> optax.GradientTransformation:
  """Adam (reference), AdamW or SGD with Nesterov momentum; optional global-norm clipping."""
  if weight_decay < 0 or grad_clip_norm < 0:
    raise UserError(f"--weight_decay={weight_decay} and --grad_clip_norm={grad_clip_norm} "
                    "must be >= 0")
  if name == "adam":
    tx = optax.adam(schedule)
  elif name == "adamw":
    tx = optax.adamw(schedule, weight_decay=weight_decay)
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=momentum, nesterov=True)
  else:
    raise UserError(f"--optimizer={name} is unknown: use one of {', '.join(OPTIMIZERS)}")
  if name != "adamw" and weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
