"""Optimizers, learning-rate schedules and parameter groups, all from optax."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
SCHEDULES = ("constant", "warmup_cosine", "one_cycle", "warmup_linear")
# Parameter groups (``param_groups``): batch-norm biases, the whitening layer's frozen filters
# and briefly trained bias, convolution filters (with Muon only); everything else is "default".
BN_BIAS, WHITEN_KERNEL, WHITEN_BIAS, DEFAULT = "bn_bias", "whiten_kernel", "whiten_bias", "default"
FILTERS = "filters"


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


def param_groups(params: Any, batch_stats: Any, filters: bool = False) -> Any:
  """The group of every parameter: ``bn_bias`` for a batch norm's bias (a module that also
  keeps running statistics), ``whiten_kernel`` / ``whiten_bias`` for the ``whiten`` layer's,
  with ``filters`` ``filters`` for the other 4-D convolution kernels, else ``default``."""
  normalised = {path[:-1] for path, _ in jax.tree_util.tree_flatten_with_path(batch_stats)[0]}

  def group(path, leaf) -> str:
    names = tuple(getattr(k, "key", str(k)) for k in path)
    if names[-2:] == ("whiten", "kernel"):
      return WHITEN_KERNEL
    if names[-2:] == ("whiten", "bias"):
      return WHITEN_BIAS
    if names[-1] == "bias" and tuple(path[:-1]) in normalised:
      return BN_BIAS
    if filters and names[-1] == "kernel" and len(leaf.shape) == 4:
      return FILTERS
    return DEFAULT

  return jax.tree_util.tree_map_with_path(group, params)


def _base(name: str, schedule: optax.Schedule, weight_decay: float, momentum: float
          ) -> optax.GradientTransformation:
  if name == "adam":
    tx = optax.adam(schedule)
  elif name == "adamw":
    return optax.adamw(schedule, weight_decay=weight_decay)
  elif name in ("sgd", "muon"):  # muon: SGD for all but the filters (make_optimizer)
    tx = optax.sgd(schedule, momentum=momentum, nesterov=True)
  else:
    raise ValueError(f"optimizer {name!r} is unknown: use one of {OPTIMIZERS}")
  # Coupled L2 (through the momentum, scaled by the schedule), as torch.optim does.
  return optax.chain(optax.add_decayed_weights(weight_decay), tx) if weight_decay else tx


def muon_filters(schedule: optax.Schedule, momentum: float) -> optax.GradientTransformation:
  """Muon on convolution filters, as airbench94_muon trains them: Nesterov momentum, then
  Newton-Schulz orthogonalisation of each kernel as a (kh * kw * in, out) matrix
  (``optax.contrib.scale_by_muon``), times the rate; and each kernel is first rescaled to
  Frobenius norm sqrt(out). Batch norm follows every such conv, so only a kernel's direction
  matters, and the fixed norm keeps Muon's fixed-size step a fixed fraction of it. The
  rescaling is hand-written: optax has no weight projection to chain."""
  dims = optax.contrib.MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)

  def rescale(updates, state, params):
    moved = jax.tree.map(
        lambda u, p: u + p * (jnp.sqrt(p.shape[-1]) / jnp.linalg.norm(p) - 1), updates, params)
    return moved, state

  return optax.chain(
      optax.contrib.scale_by_muon(beta=momentum, nesterov=True,
                                  weight_dimension_numbers=lambda tree: jax.tree.map(
                                      lambda _: dims, tree)),
      optax.scale_by_learning_rate(schedule),
      optax.GradientTransformation(lambda _: optax.EmptyState(), rescale))


def make_optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, grad_clip_norm: float = 0.0,
                   bias_lr_scale: float = 1.0, whiten_bias_steps: int | None = None,
                   groups: Any = None, muon_lr_scale: float = 1.0,
                   muon_momentum: float = 0.6) -> optax.GradientTransformation:
  """Adam (reference), AdamW or SGD with Nesterov momentum; optional global-norm clipping.

  With ``groups`` (``param_groups``): batch-norm biases learn at ``bias_lr_scale`` times the
  rate with weight decay divided by it (the same decay per step), the whitening filters are
  frozen and the whitening bias learns for its first ``whiten_bias_steps`` steps only.
  ``muon`` is SGD for every group but ``filters`` (``param_groups(..., filters=True)``),
  which ``muon_filters`` trains at ``muon_lr_scale`` times the rate, without weight decay.
  """
  tx = _base(name, schedule, weight_decay, momentum)
  if name == "muon" and groups is None:
    raise ValueError("optimizer 'muon' needs the parameter groups (param_groups(..., filters=True))")
  if groups is not None:
    labels = set(jax.tree.leaves(groups))
    scaled = lambda step: schedule(step) * bias_lr_scale  # noqa: E731
    brief = lambda step: jnp.where(step < (whiten_bias_steps or 0), schedule(step), 0.0)  # noqa: E731
    muon_rate = lambda step: schedule(step) * muon_lr_scale  # noqa: E731
    transforms = {DEFAULT: tx, WHITEN_KERNEL: optax.set_to_zero(),
                  BN_BIAS: _base(name, scaled, weight_decay / bias_lr_scale, momentum),
                  WHITEN_BIAS: _base(name, brief, weight_decay, momentum),
                  FILTERS: muon_filters(muon_rate, muon_momentum) if name == "muon" else tx}
    tx = optax.multi_transform({k: v for k, v in transforms.items() if k in labels}, groups)
  if grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
