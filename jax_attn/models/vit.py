"""Vision Transformer: tokens, a <class> token, positions, encoder blocks, a linear head."""
from __future__ import annotations

from typing import Literal, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attn.models.attention import MultiHeadSelfAttention, ScaleMode
from jax_attn.models.checks import check_choices, check_positive, check_stage_counts
from jax_attn.models.dropout import Dropout
from jax_attn.models.initializers import dirac, pytorch_defaults
from jax_attn.models.sa_cnn import halve
from jax_attn.models.whitening import PatchWhitening

# torch.nn.LayerNorm's epsilon, so imported notebook weights give the notebook's outputs.
LAYER_NORM_EPSILON = 1e-5


class ViT(nn.Module):
  """ViT classifier; the defaults are the notebook's (497,930 parameters).

  tokens (``tokenizer``: ``patch`` embedding, ``cct``: a compact-convolutional-transformer
  stem, ``airbench``: airbench's batch-normed convolution trunk) -> prepend <class> -> +
  positions -> dropout -> ``depth`` encoder blocks -> (a final LayerNorm if pre-norm) -> pool
  -> Dense head. ``pooling``: the class token, or ``class_seq``: the class token beside a
  sequence pooling of the other tokens (CCT's softmax-weighted mean). With ``class`` pooling the
  last block computes the class token alone (nothing reads the other tokens' outputs).
  ``local_kernel=k`` adds a depth-wise k x k convolution of the token grid beside each block's
  attention. ``pytorch_init``: the patch embedding and the Dense layers start from PyTorch's
  default initialisation, as the notebook's do (it trains faster from it), else from Flax's
  (the convolutional tokenizers always do). Returns logits (the notebook returns log_softmax:
  the same loss and argmax).
  """
  num_classes: int = 10
  tokenizer: Literal["patch", "cct", "airbench"] = "patch"
  patch_size: int = 16
  stem_widths: Sequence[int] = (64,)
  stem_convs: Sequence[int] = (1, 1)  # airbench: convs per stage (stem_widths + hidden_dim)
  hidden_dim: int = 128
  num_heads: int = 8
  mlp_dim: int = 256
  depth: int = 3
  dropout_rate: float = 0.1
  attention_scale: ScaleMode = "inv_dim"
  norm_position: Literal["post", "pre"] = "post"
  pooling: Literal["class", "class_seq"] = "class"
  token_init_std: float = 1.0
  local_kernel: int = 0
  pytorch_init: bool = True
  # The mapped axis the global batch is split over (pmap / shard_map), when it is: dropout
  # masks and the airbench tokenizer's batch statistics are then the global batch's.
  batch_axis: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    self._check(images)
    if self.tokenizer == "patch":
      p = self.patch_size
      token_map = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), padding="VALID",
                          dtype=self.dtype, name="patch_embedding",
                          **pytorch_defaults(p * p * images.shape[-1], self.pytorch_init))(
                              images.astype(self.dtype))
    elif self.tokenizer == "cct":
      token_map = CCTTokenizer(self.hidden_dim, self.stem_widths, self.dtype,
                               name="cct_tokenizer")(images)
    else:
      token_map = AirbenchTokenizer(self.hidden_dim, self.stem_widths, self.stem_convs,
                                    self.batch_axis, self.dtype,
                                    name="airbench_tokenizer")(images, train=train)
    batch, *grid, dim = token_map.shape
    x = token_map.reshape(batch, -1, dim)
    init = nn.initializers.normal(self.token_init_std)
    class_token = self.param("class_token", init, (1, 1, dim)).astype(x.dtype)
    x = jnp.concatenate([jnp.broadcast_to(class_token, (batch, 1, dim)), x], axis=1)
    x = x + self.param("pos_embedding", init, (1,) + x.shape[1:]).astype(x.dtype)
    x = Dropout(self.dropout_rate, batch_axis=self.batch_axis)(x, deterministic=not train)
    for i in range(self.depth):
      x = Encoder1DBlock(self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_scale,
                         self.norm_position, self.local_kernel, self.pytorch_init,
                         self.batch_axis, self.dtype, name=f"encoder_block{i}")(
          x, tuple(grid), train=train, class_only=self.pooling == "class" and i == self.depth - 1)
    if self.norm_position == "pre":
      x = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="encoder_norm")(x)
    dense = lambda features, name: nn.Dense(  # noqa: E731
        features, dtype=self.dtype, name=name, **pytorch_defaults(dim, self.pytorch_init))
    pooled = x[:, 0]
    if self.pooling == "class_seq":  # CCT's sequence pooling: a softmax over a score per token
      scores = dense(1, "sequence_pool")(x[:, 1:]).astype(jnp.float32)
      weights = jax.nn.softmax(scores, axis=1).astype(x.dtype)
      pooled = jnp.concatenate([pooled, jnp.sum(weights * x[:, 1:], axis=1)], axis=-1)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                      **pytorch_defaults(pooled.shape[-1], self.pytorch_init))(pooled)
    chex.assert_shape(logits, (images.shape[0], self.num_classes))
    return logits.astype(jnp.float32)

  def _check(self, images: jax.Array) -> None:
    chex.assert_rank(images, 4)
    check_choices(self)
    check_positive(self, "num_classes", "patch_size", "hidden_dim", "num_heads", "mlp_dim",
                   "depth")
    height, width = images.shape[1:3]
    if self.hidden_dim % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} does not divide hidden_dim={self.hidden_dim}")
    if self.local_kernel < 0 or self.local_kernel % 2 == 0 and self.local_kernel:
      raise ValueError(f"local_kernel must be 0 (off) or an odd size, got {self.local_kernel}")
    stages = len(self.stem_widths) + 1
    if self.tokenizer == "airbench":  # a 2x2 valid whitening conv, then a 2x2 pool per stage
      check_stage_counts(self.stem_convs, stages, "stem_convs", "stem_widths + hidden_dim")
      if min(height, width) - 1 < 2 ** stages:
        raise ValueError(f"image size {height}x{width} leaves no tokens after the airbench "
                         f"tokenizer's {stages} pools: use fewer stem_widths")
      return
    stride = self.patch_size if self.tokenizer == "patch" else 2 ** stages
    if height % stride or width % stride:
      raise ValueError(f"image size {height}x{width} is not divisible by the {self.tokenizer} "
                       f"tokenizer's stride {stride}")


class Encoder1DBlock(nn.Module):
  """Transformer encoder block, post-norm (the notebook's) or pre-norm:

  post: ``x = LN(x + drop(MHSA(x))); x = LN(x + drop(MLP(x)))``
  pre:  ``x = x + drop(MHSA(LN(x))); x = x + drop(MLP(LN(x)))``

  With ``local_kernel`` the attention's term is ``drop(MHSA(a)) + LocalMixing(a)``: global
  mixing beside local mixing on the token ``grid``. With ``class_only`` the block returns the
  class token's output alone: it asks the attention with that token only (every token is
  still a key and a value) and runs the MLP on it only.
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.1
  attention_scale: ScaleMode = "inv_dim"
  norm_position: Literal["post", "pre"] = "post"
  local_kernel: int = 0
  pytorch_init: bool = False
  batch_axis: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, grid: tuple[int, int], *, train: bool = False,
               class_only: bool = False) -> jax.Array:
    norm1 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm1")
    norm2 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm2")
    attention = MultiHeadSelfAttention(self.num_heads, self.attention_scale, self.pytorch_init,
                                       self.dtype, name="attention")
    mlp = MlpBlock(self.mlp_dim, self.pytorch_init, self.dtype, name="mlp")
    dropout = Dropout(self.dropout_rate, batch_axis=self.batch_axis)
    drop = lambda y: dropout(y, deterministic=not train)  # noqa: E731
    queries = 1 if class_only else x.shape[1]

    def mix(a):  # the local term is a convolution, not a branch: no dropout
      mixed = drop(attention(a[:, :queries], a))
      if self.local_kernel:
        mixed += LocalMixing(self.local_kernel, self.dtype, name="local")(a, grid)[:, :queries]
      return mixed

    if self.norm_position == "pre":
      y = x[:, :queries] + mix(norm1(x))
      return y + drop(mlp(norm2(y)))
    y = norm1(x[:, :queries] + mix(x))
    return norm2(y + drop(mlp(y)))


class MlpBlock(nn.Module):
  """Dense -> ReLU -> Dense, the notebook encoder's feed-forward."""
  mlp_dim: int
  pytorch_init: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="dense1",
                         **pytorch_defaults(x.shape[-1], self.pytorch_init))(x))
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="dense2",
                    **pytorch_defaults(self.mlp_dim, self.pytorch_init))(y)


class LocalMixing(nn.Module):
  """A depth-wise ``k x k`` convolution of the tokens laid out on their ``grid`` (the class
  token, first, gets zero), zero-initialised so a block starts as it would without it: the
  locality that helps a small ViT learn from little data (as LocalViT's depth-wise convs)."""
  kernel_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
    batch, length, dim = tokens.shape
    first = length - grid[0] * grid[1]
    k = self.kernel_size
    mixed = nn.Conv(dim, (k, k), padding="SAME", feature_group_count=dim, dtype=self.dtype,
                    kernel_init=nn.initializers.zeros, name="conv")(
                        tokens[:, first:].reshape(batch, *grid, dim))
    return jnp.concatenate([jnp.zeros_like(tokens[:, :first]), mixed.reshape(batch, -1, dim)],
                           axis=1)


class CCTTokenizer(nn.Module):
  """[3x3 conv -> ReLU -> 3x3/2 max-pool] per width of ``stem_widths + (hidden_dim,)``: the
  token map ``[batch, H / 2^n, W / 2^n, hidden_dim]``. Overlapping convolutions give the tokens
  the local structure a linear patch embedding lacks (Compact Convolutional Transformers)."""
  hidden_dim: int
  stem_widths: Sequence[int] = (64,)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(self.dtype)
    for i, width in enumerate(tuple(self.stem_widths) + (self.hidden_dim,)):
      x = nn.Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                  name=f"conv{i + 1}")(x)
      x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


class AirbenchTokenizer(nn.Module):
  """airbench's convolution trunk as tokens: a frozen 2x2 patch-whitening conv and GELU, then
  per width of ``stem_widths + (hidden_dim,)`` ``stem_convs`` 3x3 convs (dirac-initialised, no
  bias), the first followed by a 2x2 max-pool, each by batch norm without scale and GELU. A
  32x32 image gives 7x7 tokens. Whitening and batch norm give the tokens the well-conditioned
  local features that let a CNN learn CIFAR-10 in a few epochs; the blocks then mix them."""
  hidden_dim: int
  stem_widths: Sequence[int] = (64,)
  stem_convs: Sequence[int] = (1, 1)
  batch_axis: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.gelu(PatchWhitening(dtype=self.dtype, name="stem")(images.astype(self.dtype)))
    widths = tuple(self.stem_widths) + (self.hidden_dim,)
    layer = 0
    for width, convs in zip(widths, self.stem_convs):
      for conv in range(convs):
        layer += 1
        x = nn.Conv(width, (3, 3), padding=1, use_bias=False, dtype=self.dtype,
                    kernel_init=dirac(nn.initializers.lecun_normal()), name=f"conv{layer}")(x)
        x = halve(x) if conv == 0 else x
        x = nn.BatchNorm(use_running_average=not train, momentum=0.6, epsilon=1e-12,
                         use_scale=False, axis_name=self.batch_axis if train else None,
                         dtype=self.dtype, name=f"bn{layer}")(x)
        x = nn.gelu(x)
    return x
