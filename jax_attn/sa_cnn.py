"""SA-CNN: convolution stages interleaved with SAGAN 2-D self-attention.

Only the optional Dense head comes from ``jax_attn/layers.py`` (``nn.Dense``'s parameters,
with a faster CPU weight gradient); the rest is plain Flax and ``attention.SelfAttention2D``.
"""
from __future__ import annotations

from typing import Literal, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attn.attention import AttentionImpl, ScaleMode, SelfAttention2D
from jax_attn.initializers import InitStyle, dirac, layer_init
from jax_attn.layers import Dense
from jax_attn.whitening import PatchWhitening


# airbench's fast-training trunk: whitened 2x2 stem, per stage conv -> 2x2 pool -> more convs,
# batch norm without scale keeping 0.6 of its statistics each step (torch momentum 0.4), GELU,
# dirac init. The tuned_v2 SA-CNN preset and the ViT's ``cnn`` tokenizer are both built on it.
AIRBENCH_TRUNK = {"pool_position": "after_first_conv", "norm": "batch", "bn_scale": False,
                  "bn_momentum": 0.6, "bn_epsilon": 1e-12, "activation": "gelu",
                  "dirac_init": True, "stem": "whiten"}


def _halve(x: jax.Array) -> jax.Array:
  """The stages' 2x2 max-pool with stride 2: halves the height and the width."""
  return nn.max_pool(x, (2, 2), strides=(2, 2))


class SACNN(nn.Module):
  """Convolutions with SAGAN self-attention, returning class logits.

  Each stage ``i`` is ``convs_per_stage`` (one count, or one per stage) x
  [3x3 conv -> (batch norm) -> ReLU], then a 2x2 max-pool if ``i in pool_stages``,
  then ``SelfAttention2D`` if ``i in attention_stages``. With
  ``pool_position='after_first_conv'`` the pool follows the stage's first conv
  instead (as in fast CIFAR ResNets: the later convs run at a quarter of the cost).
  ``pool_before_norm=True`` pools straight after that conv, before its batch norm and
  activation (airbench's conv -> pool -> BN -> GELU): the norm then standardises the pooled map
  that the next layer sees, and it and the activation run at a quarter of the size.
  With ``residual=True`` every conv whose input already has the stage's width
  (a stage's second and later convs) gets an identity shortcut: ``x + ReLU(BN(conv(x)))``,
  so extra convs per stage add depth that still trains in few epochs.
  The head is either the reference's ``conv3x3(->classes) + ReLU + global average
  pool`` (``head='conv_gap'``), global average pool + Dense (``head='gap_dense'``) or global
  max pool + Dense without bias, times ``head_scale`` (``head='max_linear'``, airbench's);
  ``head='none'`` returns the last feature map instead of logits (the ViT's ``cnn`` tokenizer).

  Fast-training options (airbench-style; the defaults leave the reference network):
  ``stem='whiten'`` puts a frozen 2x2 patch-whitening convolution (``whitening.py``) and the
  activation before the stages; ``activation='gelu'``; ``bn_scale=False`` (batch norm without a
  learned scale), ``bn_momentum``, ``bn_epsilon``; ``dirac_init`` starts every 3x3 conv's
  first ``min(in, out)`` filters as the identity.

  The seed configuration (the defaults) is the reference notebook's network:
  520,870 parameters. The reference returns log_softmax; we return the logits,
  which give the same cross-entropy and the same argmax.
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128, 256)
  attention_stages: Sequence[int] = (0, 1, 2, 3)
  pool_stages: Sequence[int] = ()
  convs_per_stage: int | Sequence[int] = 1
  pool_position: Literal["end", "after_first_conv"] = "end"
  pool_before_norm: bool = False
  residual: bool = False
  norm: Literal["none", "batch"] = "none"
  head: Literal["conv_gap", "gap_dense", "max_linear", "none"] = "conv_gap"
  head_scale: float = 1.0
  stem: Literal["none", "whiten"] = "none"
  activation: Literal["relu", "gelu"] = "relu"
  bn_scale: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dirac_init: bool = False
  attention_scale: ScaleMode = "none"
  attention_impl: AttentionImpl = "einsum"
  # Set when the batch is split over devices (pmap / shard_map axis): batch norm then uses the
  # statistics of the global batch, so a run trains the same on any number of devices.
  batch_axis: str | None = None
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    self._check()
    chex.assert_rank(images, 4)
    x = images.astype(self.dtype)
    act = nn.gelu if self.activation == "gelu" else nn.relu
    if self.stem == "whiten":
      x = act(PatchWhitening(dtype=self.dtype, name="stem")(x))
    layer = 0
    for stage, (width, convs) in enumerate(zip(self.widths, self._conv_counts())):
      pool_after = convs if self.pool_position == "end" else 1
      for conv in range(convs):
        layer += 1
        shortcut = x if self.residual and x.shape[-1] == width else None
        x = nn.Conv(width, (3, 3), padding=1, use_bias=self.norm == "none",
                    dtype=self.dtype, name=f"conv{layer}", **self._conv_init(x.shape[-1]))(x)
        pool_here = conv + 1 == pool_after and stage in self.pool_stages
        if pool_here and self.pool_before_norm:
          x = _halve(x)
          shortcut = None if shortcut is None else _halve(shortcut)
        if self.norm == "batch":
          x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, use_scale=self.bn_scale,
                           axis_name=self.batch_axis if train else None,
                           dtype=self.dtype, name=f"bn{layer}")(x)
        x = act(x)
        if shortcut is not None:
          x = x + shortcut
        if pool_here and not self.pool_before_norm:
          x = _halve(x)
      if stage in self.attention_stages:
        x = SelfAttention2D(scale=self.attention_scale, attention_impl=self.attention_impl,
                            init_style=self.init_style, dtype=self.dtype,
                            name=f"sa{stage + 1}")(x)
    if self.head == "none":
      return x
    if self.head == "conv_gap":
      x = nn.Conv(self.num_classes, (3, 3), padding=1, dtype=self.dtype,
                  name=f"conv{layer + 1}", **layer_init(self.init_style, 9 * x.shape[-1]))(x)
      logits = jnp.mean(nn.relu(x), axis=(1, 2))
    elif self.head == "gap_dense":
      logits = Dense(self.num_classes, self.init_style, self.dtype, name="head")(
          jnp.mean(x, axis=(1, 2)))
    else:
      logits = self.head_scale * nn.Dense(
          self.num_classes, use_bias=False, dtype=self.dtype, name="head",
          **layer_init(self.init_style, x.shape[-1]))(jnp.max(x, axis=(1, 2)))
    chex.assert_shape(logits, (images.shape[0], self.num_classes))
    return logits.astype(jnp.float32)

  def _check(self) -> None:
    if not self.widths or any(w < 1 for w in self.widths):
      raise ValueError(f"SACNN widths must be positive channel counts, got {tuple(self.widths)}")
    if self.num_classes < 1:
      raise ValueError(f"SACNN num_classes must be positive, got {self.num_classes}")
    self._conv_counts()
    for name in ("attention_stages", "pool_stages"):
      bad = [i for i in getattr(self, name) if not 0 <= i < len(self.widths)]
      if bad:
        raise ValueError(f"{name} {bad} are not stage indices 0..{len(self.widths) - 1}")
    if self.norm not in ("none", "batch") or self.head not in ("conv_gap", "gap_dense",
                                                               "max_linear", "none"):
      raise ValueError(f"unknown norm {self.norm!r} or head {self.head!r}")
    if self.stem not in ("none", "whiten") or self.activation not in ("relu", "gelu"):
      raise ValueError(f"unknown stem {self.stem!r} or activation {self.activation!r}")
    if self.pool_position not in ("end", "after_first_conv"):
      raise ValueError(f"unknown pool_position {self.pool_position!r}: use 'end' or 'after_first_conv'")

  def _conv_init(self, fan_in_channels: int) -> dict:
    inits = layer_init(self.init_style, 9 * fan_in_channels)
    if self.dirac_init:
      inits["kernel_init"] = dirac(inits.get("kernel_init", nn.initializers.lecun_normal()))
    return inits

  def _conv_counts(self) -> tuple[int, ...]:
    return conv_counts(self.convs_per_stage, len(self.widths), "convs_per_stage")


def conv_counts(counts: int | Sequence[int], stages: int, field: str,
                stages_are: str = "") -> tuple[int, ...]:
  """Convolutions per stage from one count or one per stage; a ``ValueError`` naming the
  caller's setting ``field`` (SACNN's ``convs_per_stage``, the ViT tokenizer's ``stem_convs``)."""
  given = counts if isinstance(counts, int) else tuple(counts)
  counts = (given,) * stages if isinstance(given, int) else given
  if len(counts) != stages or min(counts, default=0) < 1:
    raise ValueError(f"{field} {given} must be positive, with one count per stage "
                     f"({stages}{stages_are}) if a sequence")
  return counts
