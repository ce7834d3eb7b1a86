"""Vision Transformer: patch or convolutional tokens, <class> token, positions, encoder blocks.

``ViT`` comes first, then its blocks. The layers written for CPU speed (``Dense``,
``Dropout``, ``PatchEmbedding``, the last block's ``last_block_queries``) are in
``jax_attn/layers.py``: each has the plain Flax layer's parameters and outputs.
"""
from __future__ import annotations

from typing import Literal, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attn.attention import AttentionImpl, MultiHeadSelfAttention, ScaleMode
from jax_attn.initializers import InitStyle, layer_init
from jax_attn.layers import Dense, Dropout, PatchEmbedding, last_block_queries
from jax_attn.sa_cnn import AIRBENCH_TRUNK, SACNN, conv_counts

# torch.nn.LayerNorm's epsilon, so imported reference weights give the same outputs.
LAYER_NORM_EPSILON = 1e-5


class ViT(nn.Module):
  """ViT classifier; the defaults are the reference notebook's (497,930 parameters).

  tokens (patches, a conv stem, or airbench's batch-normed convolution trunk: ``tokenizer``
  ``patch`` / ``conv`` / ``cnn``) -> prepend <class> -> + positions -> dropout ->
  ``depth`` encoder blocks -> (final LayerNorm if pre-norm) -> pool -> Dense head. Pooling:
  the class token, the mean of the other tokens, or ``class_seq``: the class token beside a
  sequence pooling of the other tokens (CCT's learned softmax-weighted mean), concatenated.
  ``local_kernel=k`` adds a depth-wise k x k convolution of the token grid beside each block's
  attention (``LocalMixing``). Returns logits (the reference returns log_softmax: same loss,
  same argmax).
  """
  num_classes: int = 10
  tokenizer: Literal["patch", "conv", "cnn"] = "patch"
  patch_size: int = 16
  stem_widths: Sequence[int] = (64,)
  stem_convs: int | Sequence[int] = 1
  hidden_dim: int = 128
  num_heads: int = 8
  mlp_dim: int = 256
  depth: int = 3
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  attention_scale: ScaleMode = "inv_dim"
  norm_position: Literal["post", "pre"] = "post"
  pooling: Literal["class", "mean", "class_seq"] = "class"
  token_init_std: float = 1.0
  local_kernel: int = 0
  attention_impl: AttentionImpl = "einsum"
  # The mapped axis the global batch is split over (pmap / shard_map), when it is: dropout
  # masks and the cnn tokenizer's batch statistics are then the global batch's, the same on
  # any number of devices.
  batch_axis: str | None = None
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    chex.assert_rank(images, 4)
    self._check(*images.shape[1:3])
    if self.tokenizer == "patch":
      token_map = PatchEmbedding(self.hidden_dim, self.patch_size, init_style=self.init_style,
                                 dtype=self.dtype, name="patch_embedding")(images)
    elif self.tokenizer == "conv":
      token_map = ConvTokenizer(self.hidden_dim, self.stem_widths, init_style=self.init_style,
                                dtype=self.dtype, name="conv_tokenizer")(images)
    else:
      token_map = CNNTokenizer(self.hidden_dim, self.stem_widths, self.stem_convs,
                               batch_axis=self.batch_axis, init_style=self.init_style,
                               dtype=self.dtype, name="cnn_tokenizer")(images, train=train)
    grid = token_map.shape[1:3]  # every tokenizer returns its map; the blocks see the grid
    x = token_map.reshape(token_map.shape[0], -1, self.hidden_dim)
    x = AddClassToken(self.token_init_std, name="class_token")(x)
    x = AddPositionEmbs(self.token_init_std, name="pos_embedding")(x)
    x = Dropout(self.dropout_rate, deterministic=not train, batch_axis=self.batch_axis)(x)
    # Speed, same results: the last block may compute the class token's output alone.
    last_queries = last_block_queries(self, pooling=self.pooling, train=train,
                                      attention_dropout_rate=self.attention_dropout_rate)
    for i in range(self.depth):
      x = Encoder1DBlock(
          self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          attention_scale=self.attention_scale, norm_position=self.norm_position,
          local_kernel=self.local_kernel, attention_impl=self.attention_impl,
          batch_axis=self.batch_axis, init_style=self.init_style, dtype=self.dtype,
          name=f"encoder_block{i}")(
              x, grid, train=train, num_queries=last_queries if i == self.depth - 1 else None)
    if self.norm_position == "pre":
      x = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="encoder_norm")(x)
    if self.pooling == "class":
      pooled = x[:, 0]
    elif self.pooling == "mean":
      pooled = jnp.mean(x[:, 1:], axis=1)
    else:
      pooled = jnp.concatenate([x[:, 0], SequencePool(self.init_style, self.dtype,
                                                      name="sequence_pool")(x[:, 1:])], axis=-1)
    logits = Dense(self.num_classes, self.init_style, self.dtype, name="head")(pooled)
    chex.assert_shape(logits, (images.shape[0], self.num_classes))
    return logits.astype(jnp.float32)

  def _check(self, height: int, width: int) -> None:
    for name in ("num_classes", "patch_size", "hidden_dim", "num_heads", "mlp_dim", "depth"):
      if getattr(self, name) < 1:
        raise ValueError(f"ViT {name} must be positive, got {getattr(self, name)}")
    if self.tokenizer not in ("patch", "conv", "cnn"):
      raise ValueError(f"unknown tokenizer {self.tokenizer!r}: use 'patch', 'conv' or 'cnn'")
    stride = self.patch_size if self.tokenizer == "patch" else 2 ** (len(self.stem_widths) + 1)
    if self.tokenizer != "cnn" and (height % stride or width % stride):
      raise ValueError(f"image size {height}x{width} is not divisible by the {self.tokenizer} "
                       f"tokenizer's stride {stride}")
    if self.tokenizer == "cnn":  # 2x2 valid whitening, then a 2x2 pool per stage
      stages = len(self.stem_widths) + 1
      conv_counts(self.stem_convs, stages, "stem_convs", ": stem_widths + hidden_dim")
      if min(height, width) - 1 < 2 ** stages:
        raise ValueError(f"image size {height}x{width} leaves no tokens after the cnn "
                         f"tokenizer's {stages} pools: use fewer stem_widths")
    if self.local_kernel < 0 or self.local_kernel % 2 == 0 and self.local_kernel:
      raise ValueError(f"local_kernel must be 0 (off) or an odd size, got {self.local_kernel}")
    if self.hidden_dim % self.num_heads:
      raise ValueError(
          f"num_heads={self.num_heads} does not divide hidden_dim={self.hidden_dim}")
    if (self.norm_position not in ("post", "pre")
        or self.pooling not in ("class", "mean", "class_seq")):
      raise ValueError(f"unknown norm_position {self.norm_position!r} or pooling {self.pooling!r}")


class SequencePool(nn.Module):
  """``[batch, tokens, dim] -> [batch, dim]``: tokens weighted by a softmax over a learned
  score of each (the sequence pooling of Compact Convolutional Transformers)."""
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    scores = Dense(1, self.init_style, self.dtype, name="score")(tokens)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=1).astype(tokens.dtype)
    return jnp.sum(weights * tokens, axis=1)


class Encoder1DBlock(nn.Module):
  """Transformer encoder block, post-norm (reference) or pre-norm.

  post: ``x = LN(x + drop(MHSA(x))); x = LN(x + drop(MLP(x)))``
  pre:  ``x = x + drop(MHSA(LN(x))); x = x + drop(MLP(LN(x)))``
  With ``local_kernel`` the attention's term becomes ``drop(MHSA(a)) + LocalMixing(a)`` of
  the same input ``a``: global mixing by attention beside local mixing on the token grid.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  attention_scale: ScaleMode = "inv_dim"
  norm_position: Literal["post", "pre"] = "post"
  local_kernel: int = 0
  attention_impl: AttentionImpl = "einsum"
  batch_axis: str | None = None
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, grid: tuple[int, int], *, train: bool = False,
               num_queries: int | None = None) -> jax.Array:
    """``[batch, length, dim]`` -> the same shape, or with ``num_queries`` (see
    ``layers.last_block_queries``) the first ``num_queries`` tokens' outputs alone, computed
    without the other tokens' queries and MLPs; dropout masks are the full computation's."""
    norm1 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm1")
    norm2 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm2")
    attention = MultiHeadSelfAttention(
        self.num_heads, scale=self.attention_scale,
        attention_dropout_rate=self.attention_dropout_rate,
        attention_impl=self.attention_impl, batch_axis=self.batch_axis,
        init_style=self.init_style, dtype=self.dtype, name="attention")
    mlp = MlpBlock(self.mlp_dim, init_style=self.init_style, dtype=self.dtype, name="mlp")
    dropout = Dropout(self.dropout_rate, deterministic=not train, batch_axis=self.batch_axis)
    drop = lambda y: dropout(y, full_shape=x.shape)  # noqa: E731
    residual = x[:, :num_queries]  # all tokens when num_queries is None

    def attend(a):  # the local term is not dropped out: it is a convolution, not a branch
      mixed = drop(attention(a, deterministic=not train, num_queries=num_queries))
      if not self.local_kernel:
        return mixed
      local = LocalMixing(self.local_kernel, self.dtype, name="local")(a, grid)
      return mixed + local[:, :num_queries]

    if self.norm_position == "pre":
      y = residual + attend(norm1(x))
      return y + drop(mlp(norm2(y)))
    y = norm1(residual + attend(x))
    return norm2(y + drop(mlp(y)))


class LocalMixing(nn.Module):
  """A depth-wise ``k x k`` convolution of the tokens laid out on their ``grid`` (the class
  token, first, gets zero), zero-initialised: a block starts as it would without it. Adds the
  locality that helps a small ViT learn from little data (as LocalViT's depth-wise convs do)
  for k * k + 1 weights per channel."""
  kernel_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
    batch, length, dim = tokens.shape
    (height, width), first = grid, length - grid[0] * grid[1]
    token_map = tokens[:, first:].reshape(batch, height, width, dim)
    k = self.kernel_size
    mixed = nn.Conv(dim, (k, k), padding="SAME", feature_group_count=dim, dtype=self.dtype,
                    kernel_init=nn.initializers.zeros, name="conv")(token_map)
    return jnp.concatenate([jnp.zeros_like(tokens[:, :first]),
                            mixed.reshape(batch, height * width, dim)], axis=1)


class MlpBlock(nn.Module):
  """Dense -> ReLU -> Dense, as in the reference encoder's feed-forward."""
  mlp_dim: int
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = Dense(self.mlp_dim, self.init_style, self.dtype, name="dense1")(x)
    return Dense(x.shape[-1], self.init_style, self.dtype, name="dense2")(nn.relu(y))


class ConvTokenizer(nn.Module):
  """Convolutional tokens: [3x3 conv -> ReLU -> 3x3/2 max-pool] per width, last width
  ``hidden_dim``; returns the token map ``[batch, height, width, hidden_dim]``.

  The compact-convolutional-transformer stem: overlapping convolutions give the
  tokens local structure a linear patch projection lacks, which is what lets a
  small ViT learn CIFAR-10 in few epochs. Each layer halves the resolution.
  """
  hidden_dim: int
  stem_widths: Sequence[int] = (64,)
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(self.dtype)
    for i, width in enumerate(tuple(self.stem_widths) + (self.hidden_dim,)):
      x = nn.Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name=f"conv{i + 1}",
                  **layer_init(self.init_style, 9 * x.shape[-1]))(x)
      x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


class CNNTokenizer(nn.Module):
  """airbench's convolution trunk as tokens: the SA-CNN's stages (``sa_cnn.SACNN`` with
  ``head='none'``, no attention) on ``sa_cnn.AIRBENCH_TRUNK``, the tuned_v2 SA-CNN's
  fast-training choices: a frozen 2x2 patch-whitening stem, then per width in
  ``stem_widths + (hidden_dim,)`` ``stem_convs`` 3x3 convs (one count, or one per stage;
  dirac-initialised), the first followed by a 2x2 max-pool (before its norm, as airbench), each
  by batch norm without scale and GELU. A 32x32 image gives 7x7 tokens (the map
  ``[batch, 7, 7, hidden_dim]``). Batch norm and whitening give the tokens the well-conditioned
  local features that let a CNN learn CIFAR-10 in a few epochs; the transformer blocks then mix
  them."""
  hidden_dim: int
  stem_widths: Sequence[int] = (64,)
  stem_convs: int | Sequence[int] = 1
  batch_axis: str | None = None
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    widths = tuple(self.stem_widths) + (self.hidden_dim,)
    return SACNN(**AIRBENCH_TRUNK, widths=widths, convs_per_stage=self.stem_convs,
                 attention_stages=(), pool_stages=tuple(range(len(widths))),
                 pool_before_norm=True, head="none", batch_axis=self.batch_axis,
                 init_style=self.init_style, dtype=self.dtype, name="trunk")(images, train=train)


class AddClassToken(nn.Module):
  """Prepends a learned ``<class>`` token to the token sequence."""
  init_std: float = 1.0

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    batch, _, dim = tokens.shape
    token = self.param("class_token", nn.initializers.normal(self.init_std), (1, 1, dim))
    token = jnp.broadcast_to(token.astype(tokens.dtype), (batch, 1, dim))
    return jnp.concatenate([token, tokens], axis=1)


class AddPositionEmbs(nn.Module):
  """Adds learned position embeddings, one per token (class token included)."""
  init_std: float = 1.0

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    shape = (1,) + tokens.shape[1:]
    embedding = self.param("pos_embedding", nn.initializers.normal(self.init_std), shape)
    return tokens + embedding.astype(tokens.dtype)
