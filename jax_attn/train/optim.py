"""Optimizers, learning-rate schedules and parameter groups, all from optax."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

# Parameter groups (``param_groups``): batch-norm biases, the whitening layer's frozen filters
# and briefly trained bias, convolution filters (with Muon only); everything else is "default".
BN_BIAS, WHITEN_KERNEL, WHITEN_BIAS, DEFAULT = "bn_bias", "whiten_kernel", "whiten_bias", "default"
FILTERS = "filters"


def make_schedule(config: Any, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate of every step of a run of ``config.epochs``: ``constant`` (the
  notebook's), ``warmup_cosine`` (linear warm-up from 0, cosine to 0), or ``warmup_linear``
  (airbench's triangle: linear from ``lr_warmup_start`` x the peak to the peak over the
  warm-up, then linear to ``lr_final`` x the peak at the last step)."""
  peak = config.learning_rate
  total_steps = max(steps_per_epoch * config.epochs, 1)
  warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps)
  if config.schedule == "warmup_linear":
    return optax.join_schedules(
        [optax.linear_schedule(config.lr_warmup_start * peak, peak, warmup_steps),
         optax.linear_schedule(peak, config.lr_final * peak,
                               max(total_steps - 1 - warmup_steps, 1))], [warmup_steps])
  return optax.constant_schedule(peak)


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
  """adam, adamw, or (for sgd and muon's other parameters) SGD with Nesterov momentum."""
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=weight_decay)
  tx = (optax.adam(schedule) if name == "adam"
        else optax.sgd(schedule, momentum=momentum, nesterov=True))
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


def make_optimizer(config: Any, schedule: optax.Schedule, steps_per_epoch: int, params: Any,
                   batch_stats: Any) -> optax.GradientTransformation:
  """The optimizer of ``config`` for ``params`` (shapes suffice), with global-norm clipping.

  By parameter group (``param_groups``): batch-norm biases learn at ``bias_lr_scale`` times the
  rate with the weight decay divided by it (the same decay per step); the whitening filters are
  frozen and the whitening bias learns for its first ``whiten_bias_epochs`` only; with ``muon``
  the convolution filters are trained by ``muon_filters`` at ``muon_learning_rate`` (shaped by
  the schedule, no weight decay) and everything else by SGD.
  """
  name, decay, momentum = config.optimizer, config.weight_decay, config.momentum
  groups = param_groups(params, batch_stats, filters=name == "muon")
  labels = set(jax.tree.leaves(groups))
  tx = _base(name, schedule, decay, momentum)
  if labels != {DEFAULT}:
    scale = lambda factor: lambda step: schedule(step) * factor  # noqa: E731
    whiten_steps = round(config.whiten_bias_epochs * steps_per_epoch)
    brief = lambda step: jnp.where(step < whiten_steps, schedule(step), 0.0)  # noqa: E731
    transforms = {
        DEFAULT: tx, WHITEN_KERNEL: optax.set_to_zero(),
        BN_BIAS: _base(name, scale(config.bias_lr_scale), decay / config.bias_lr_scale, momentum),
        WHITEN_BIAS: _base(name, brief, decay, momentum),
        FILTERS: muon_filters(scale(config.muon_learning_rate / config.learning_rate),
                              config.muon_momentum)}
    tx = optax.multi_transform({k: v for k, v in transforms.items() if k in labels}, groups)
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
