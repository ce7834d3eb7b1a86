"""SA-CNN: convolution stages interleaved with SAGAN 2-D self-attention."""
from __future__ import annotations

from typing import Literal, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attn.models.attention import ScaleMode, SelfAttention2D
from jax_attn.models.checks import check_choices, check_positive, check_stage_counts
from jax_attn.models.initializers import dirac, pytorch_defaults
from jax_attn.models.whitening import PatchWhitening


def halve(x: jax.Array) -> jax.Array:
  """The stages' 2x2 max-pool with stride 2."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class SACNN(nn.Module):
  """Convolution stages with SAGAN self-attention after some of them; returns class logits.

  Stage ``i``: ``convs_per_stage[i]`` x [3x3 conv -> (batch norm) -> activation], a 2x2
  max-pool if ``i in pool_stages``, then ``SelfAttention2D`` if ``i in attention_stages``.
  ``pool_position``: at the stage's ``end``; ``after_first_conv`` (its later convs run at a
  quarter of the cost); ``before_first_norm``, straight after the first conv (airbench's conv
  -> pool -> BN -> GELU). ``residual`` adds an identity shortcut around every conv whose input
  already has the stage's width.
  Head: the notebook's ``conv_gap`` (3x3 conv to the classes, ReLU, global average pool),
  ``gap_dense`` (global average pool, Dense) or airbench's ``max_linear`` (global max pool,
  Dense without bias, times ``head_scale``).
  airbench's fast-training options: ``stem='whiten'`` (a frozen 2x2 patch-whitening conv and
  the activation first), ``activation='gelu'``, batch norm without scale (``bn_scale``),
  ``bn_momentum``, ``bn_epsilon``; ``dirac_init`` starts every 3x3 conv as the identity.

  ``pytorch_init``: every layer starts from PyTorch's default initialisation, as the
  notebook's and airbench's networks do, else from Flax's. The defaults are the notebook's
  network: 520,870 parameters. It returns log_softmax; this returns the logits (the same loss
  and argmax).
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128, 256)
  convs_per_stage: Sequence[int] = (1, 1, 1, 1)
  attention_stages: Sequence[int] = (0, 1, 2, 3)
  pool_stages: Sequence[int] = ()
  pool_position: Literal["end", "after_first_conv", "before_first_norm"] = "end"
  residual: bool = False
  norm: Literal["none", "batch"] = "none"
  bn_scale: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  activation: Literal["relu", "gelu"] = "relu"
  stem: Literal["none", "whiten"] = "none"
  dirac_init: bool = False
  head: Literal["conv_gap", "gap_dense", "max_linear"] = "conv_gap"
  head_scale: float = 1.0
  attention_scale: ScaleMode = "none"
  pytorch_init: bool = True
  # The mapped axis the global batch is split over (pmap / shard_map), when it is: batch norm
  # then uses the global batch's statistics, so a run trains the same on any number of devices.
  batch_axis: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    self._check(images)
    act = nn.gelu if self.activation == "gelu" else nn.relu
    x = images.astype(self.dtype)
    if self.stem == "whiten":
      x = act(PatchWhitening(dtype=self.dtype, name="stem")(x))
    layer = 0
    for stage, (width, convs) in enumerate(zip(self.widths, self.convs_per_stage)):
      pool_at = -1  # the conv the stage's pool follows
      if stage in self.pool_stages:
        pool_at = convs - 1 if self.pool_position == "end" else 0
      for conv in range(convs):
        layer += 1
        shortcut = x if self.residual and x.shape[-1] == width else None
        init = pytorch_defaults(9 * x.shape[-1], self.pytorch_init)
        if self.dirac_init:
          init["kernel_init"] = dirac(init["kernel_init"])
        x = nn.Conv(width, (3, 3), padding=1, use_bias=self.norm == "none", dtype=self.dtype,
                    name=f"conv{layer}", **init)(x)
        if conv == pool_at and self.pool_position == "before_first_norm":  # airbench's order
          x = halve(x)
          shortcut = None if shortcut is None else halve(shortcut)
        if self.norm == "batch":
          x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, use_scale=self.bn_scale,
                           axis_name=self.batch_axis if train else None, dtype=self.dtype,
                           name=f"bn{layer}")(x)
        x = act(x) if shortcut is None else act(x) + shortcut
        if conv == pool_at and self.pool_position != "before_first_norm":
          x = halve(x)
      if stage in self.attention_stages:
        x = SelfAttention2D(self.attention_scale, self.pytorch_init, self.dtype,
                            name=f"sa{stage + 1}")(x)
    channels = x.shape[-1]
    if self.head == "conv_gap":
      x = nn.Conv(self.num_classes, (3, 3), padding=1, dtype=self.dtype, name=f"conv{layer + 1}",
                  **pytorch_defaults(9 * channels, self.pytorch_init))(x)
      logits = jnp.mean(nn.relu(x), axis=(1, 2))
    elif self.head == "gap_dense":
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                        **pytorch_defaults(channels, self.pytorch_init))(jnp.mean(x, axis=(1, 2)))
    else:
      logits = self.head_scale * nn.Dense(
          self.num_classes, use_bias=False, dtype=self.dtype, name="head",
          kernel_init=pytorch_defaults(channels, self.pytorch_init)["kernel_init"])(
              jnp.max(x, axis=(1, 2)))
    chex.assert_shape(logits, (images.shape[0], self.num_classes))
    return logits.astype(jnp.float32)

  def _check(self, images: jax.Array) -> None:
    chex.assert_rank(images, 4)
    check_choices(self)
    check_positive(self, "num_classes")
    if not self.widths or min(self.widths) < 1:
      raise ValueError(f"SACNN widths must be positive channel counts, got {tuple(self.widths)}")
    check_stage_counts(self.convs_per_stage, len(self.widths), "convs_per_stage", "widths")
    for name in ("attention_stages", "pool_stages"):
      bad = [i for i in getattr(self, name) if not 0 <= i < len(self.widths)]
      if bad:
        raise ValueError(f"{name} {bad} are not stage indices 0..{len(self.widths) - 1}")
