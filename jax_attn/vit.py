"""Vision Transformer: patch or convolutional tokens, <class> token, positions, encoder blocks."""
from __future__ import annotations

from typing import Literal, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attn.attention import AttentionImpl, MultiHeadSelfAttention, ScaleMode
from jax_attn.dropout import Dropout
from jax_attn.initializers import InitStyle, layer_init, param_initializers
from jax_attn.linear import Dense, matmul

# torch.nn.LayerNorm's epsilon, so imported reference weights give the same outputs.
LAYER_NORM_EPSILON = 1e-5


class PatchEmbedding(nn.Module):
  """Non-overlapping ``p x p`` patches -> ``hidden_dim`` tokens ``[batch, patches, dim]``.

  The parameters are exactly a stride-``p`` ``nn.Conv``'s (kernel ``[p, p, C, dim]``,
  bias), so checkpoints and imported PyTorch weights are unchanged, but it runs as a
  reshape and one matmul: on a CPU XLA's strided convolution was the seed ViT's
  most expensive op.
  """
  hidden_dim: int
  patch_size: int
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    batch, height, width, channels = images.shape
    p = self.patch_size
    kernel_init, bias_init = param_initializers(self.init_style, p * p * channels)
    kernel = self.param("kernel", kernel_init, (p, p, channels, self.hidden_dim))
    bias = self.param("bias", bias_init, (self.hidden_dim,))
    patches = images.reshape(batch, height // p, p, width // p, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, -1, p * p * channels)
    kernel = kernel.reshape(p * p * channels, self.hidden_dim)
    return matmul(patches.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class ConvTokenizer(nn.Module):
  """Convolutional tokens: [3x3 conv -> ReLU -> 3x3/2 max-pool] per width, last width ``hidden_dim``.

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
    batch, height, width, dim = x.shape
    return x.reshape(batch, height * width, dim)


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


class MlpBlock(nn.Module):
  """Dense -> ReLU -> Dense, as in the reference encoder's feed-forward."""
  mlp_dim: int
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = Dense(self.mlp_dim, self.init_style, self.dtype, name="dense1")(x)
    return Dense(x.shape[-1], self.init_style, self.dtype, name="dense2")(nn.relu(y))


class Encoder1DBlock(nn.Module):
  """Transformer encoder block, post-norm (reference) or pre-norm.

  post: ``x = LN(x + drop(MHSA(x))); x = LN(x + drop(MLP(x)))``
  pre:  ``x = x + drop(MHSA(LN(x))); x = x + drop(MLP(LN(x)))``
  """
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  attention_scale: ScaleMode = "inv_dim"
  norm_position: Literal["post", "pre"] = "post"
  attention_impl: AttentionImpl = "einsum"
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, class_token_only: bool = False
               ) -> jax.Array:
    """``[batch, length, dim]`` -> the same shape, or ``[batch, 1, dim]`` (the class
    token's output alone, computed without the other tokens' queries, projections and
    MLPs) when ``class_token_only``; dropout masks are the full computation's either way."""
    norm1 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm1")
    norm2 = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="norm2")
    attention = MultiHeadSelfAttention(
        self.num_heads, scale=self.attention_scale,
        attention_dropout_rate=self.attention_dropout_rate,
        attention_impl=self.attention_impl, init_style=self.init_style, dtype=self.dtype,
        name="attention")
    mlp = MlpBlock(self.mlp_dim, init_style=self.init_style, dtype=self.dtype, name="mlp")
    dropout = Dropout(self.dropout_rate, deterministic=not train)
    drop = lambda y: dropout(y, full_shape=x.shape)  # noqa: E731
    queries = 1 if class_token_only else x.shape[1]
    attend = lambda y: attention(y, deterministic=not train, num_queries=queries)  # noqa: E731
    if self.norm_position == "pre":
      y = x[:, :queries] + drop(attend(norm1(x)))
      return y + drop(mlp(norm2(y)))
    y = norm1(x[:, :queries] + drop(attend(x)))
    return norm2(y + drop(mlp(y)))


class ViT(nn.Module):
  """ViT classifier; the defaults are the reference notebook's (497,930 parameters).

  Returns logits (the reference returns log_softmax: same loss, same argmax).
  """
  num_classes: int = 10
  tokenizer: Literal["patch", "conv"] = "patch"
  patch_size: int = 16
  stem_widths: Sequence[int] = (64,)
  hidden_dim: int = 128
  num_heads: int = 8
  mlp_dim: int = 256
  depth: int = 3
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  attention_scale: ScaleMode = "inv_dim"
  norm_position: Literal["post", "pre"] = "post"
  pooling: Literal["class", "mean"] = "class"
  token_init_std: float = 1.0
  attention_impl: AttentionImpl = "einsum"
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  def _check(self, height: int, width: int) -> None:
    for name in ("num_classes", "patch_size", "hidden_dim", "num_heads", "mlp_dim", "depth"):
      if getattr(self, name) < 1:
        raise ValueError(f"ViT {name} must be positive, got {getattr(self, name)}")
    if self.tokenizer not in ("patch", "conv"):
      raise ValueError(f"unknown tokenizer {self.tokenizer!r}: use 'patch' or 'conv'")
    stride = self.patch_size if self.tokenizer == "patch" else 2 ** (len(self.stem_widths) + 1)
    if height % stride or width % stride:
      raise ValueError(f"image size {height}x{width} is not divisible by the {self.tokenizer} "
                       f"tokenizer's stride {stride}")
    if self.hidden_dim % self.num_heads:
      raise ValueError(
          f"num_heads={self.num_heads} does not divide hidden_dim={self.hidden_dim}")
    if self.norm_position not in ("post", "pre") or self.pooling not in ("class", "mean"):
      raise ValueError(f"unknown norm_position {self.norm_position!r} or pooling {self.pooling!r}")

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    chex.assert_rank(images, 4)
    batch, height, width, _ = images.shape
    self._check(height, width)
    if self.tokenizer == "conv":
      x = ConvTokenizer(self.hidden_dim, self.stem_widths, init_style=self.init_style,
                        dtype=self.dtype, name="conv_tokenizer")(images)
    else:
      x = PatchEmbedding(self.hidden_dim, self.patch_size, init_style=self.init_style,
                         dtype=self.dtype, name="patch_embedding")(images)
    num_patches = x.shape[1]
    x = AddClassToken(self.token_init_std, name="class_token")(x)
    x = AddPositionEmbs(self.token_init_std, name="pos_embedding")(x)
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    # Only the class token's output is classified: unless attention weights are being
    # collected (intermediates), the last block computes that token alone (exactly the same
    # logits and gradients; ~1/5 less work for the seed ViT).
    class_only = (self.pooling == "class" and not self.is_mutable_collection("intermediates")
                  and (self.attention_dropout_rate == 0.0 or not train))
    for i in range(self.depth):
      x = Encoder1DBlock(
          self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate,
          attention_scale=self.attention_scale, norm_position=self.norm_position,
          attention_impl=self.attention_impl, init_style=self.init_style, dtype=self.dtype,
          name=f"encoder_block{i}")(x, train=train,
                                    class_token_only=class_only and i == self.depth - 1)
    chex.assert_shape(x, (batch, 1 if class_only else num_patches + 1, self.hidden_dim))
    if self.norm_position == "pre":
      x = nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=self.dtype, name="encoder_norm")(x)
    pooled = x[:, 0] if self.pooling == "class" else jnp.mean(x[:, 1:], axis=1)
    logits = Dense(self.num_classes, self.init_style, self.dtype, name="head")(pooled)
    chex.assert_shape(logits, (batch, self.num_classes))
    return logits.astype(jnp.float32)
