"""One einsum attention core and the two attention layers built on it.

Layout follows Flax: ``[batch..., length, heads, head_dim]``. The SAGAN layer is
the one-head case of the same core, so both models share every line of the math.
"""
from __future__ import annotations

import math
from typing import Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attn.initializers import InitStyle, layer_init
from jax_attn.layers import Dense, QKVProjection, apply_dropout

ScaleMode = Literal["inv_sqrt_dim", "inv_dim", "none"]
SCALE_MODES = ("inv_sqrt_dim", "inv_dim", "none")
AttentionImpl = Literal["einsum", "chunked", "fused", "flash"]
ATTENTION_IMPLS = ("einsum", "chunked", "fused", "flash")
CHUNK_BATCH = 1  # images per step of the "chunked" path (fastest measured on a 2-core CPU)
FLASH_HEAD_DIM = 64  # the kernel's head dim when SAGAN's value (C channels) is split into heads
FLASH_BLOCK = 128    # query/key block of the flash kernel's forward pass


def attention_scale(mode: str, head_dim: int) -> float:
  """Multiplier for the scores: 1/sqrt(d) (default), 1/d (reference ViT) or 1 (SAGAN)."""
  if mode == "inv_sqrt_dim":
    return 1.0 / math.sqrt(head_dim)
  if mode == "inv_dim":
    return 1.0 / head_dim
  if mode == "none":
    return 1.0
  raise ValueError(f"attention scale {mode!r} is unknown: use one of {SCALE_MODES}")


def einsum_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    scale: float,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    batch_axis: str | None = None,
) -> tuple[jax.Array, jax.Array]:
  """softmax(q k^T * scale) v with the softmax in float32.

  Args:
    query: ``[..., q_len, heads, d]``; key: ``[..., kv_len, heads, d]``;
      value: ``[..., kv_len, heads, dv]`` (dv may differ from d, as in SAGAN).
    scale: multiplier applied to the raw scores.
    dropout_rate: dropout on the attention weights (needs ``dropout_rng``).

  Returns:
    ``(out [..., q_len, heads, dv], weights [..., heads, q_len, kv_len])``; the
    weights are the float32 softmax (before dropout), rows summing to one.
  """
  chex.assert_equal_shape_prefix((query, key, value), query.ndim - 3)
  chex.assert_equal(query.shape[-1], key.shape[-1])
  scores = jnp.einsum("...qhd,...khd->...hqk", query, key,
                      preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(scores, axis=-1)
  used = weights
  if dropout_rate > 0.0 and dropout_rng is not None:
    used = apply_dropout(weights, dropout_rng, dropout_rate, batch_axis=batch_axis)
  out = jnp.einsum("...hqk,...khd->...qhd", used.astype(value.dtype), value)
  return out, weights


def chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
                      chunk: int | None = None) -> jax.Array:
  """The einsum core over chunks of ``chunk`` batch entries, recomputed in the backward pass.

  Same math as ``einsum_attention``, but the ``[chunk, heads, q_len, kv_len]``
  scores live only inside one ``lax.map`` step (and are recomputed for the
  gradient instead of stored), so on CPUs they stay in cache instead of
  streaming the whole batch's matrices through memory several times.
  """
  core = jax.checkpoint(lambda qkv: einsum_attention(*qkv, scale=scale)[0])
  return jax.lax.map(core, (query, key, value), batch_size=chunk or CHUNK_BATCH)


def flash_kernel_available() -> bool:
  """Whether ``flash`` runs the Pallas kernel compiled by Triton (GPUs) rather than its
  stand-ins (the chunked form in models, the interpreter in tests)."""
  return jax.default_backend() == "gpu"


def flash_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
                    interpret: bool | None = None) -> jax.Array:
  """The einsum core's output without the ``[q_len, kv_len]`` scores in memory, forward and
  backward: JAX's own Pallas flash-attention kernel (``jax.experimental.pallas.ops.gpu.
  attention.mha``, Triton, with its custom VJP), or its interpreter (``interpret``, the default
  off GPUs: slow, for tests).

  The kernel wants one head dim for q, k and v and lengths that are multiples of its blocks.
  Both adaptations are exact: a value wider than the keys (SAGAN: C against C/8) is split
  into heads of ``FLASH_HEAD_DIM`` channels that share the (zero-padded, so unchanged) query
  and key; lengths are padded to one multiple of the block (the kernel takes one segment-id
  array for queries and keys), the padding keys in a segment of their own, which no real query
  attends to. Queries may be fewer than keys (the ViT's last block asks with its class token
  alone), not more.
  """
  if interpret is None:
    interpret = not flash_kernel_available()
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention  # noqa: PLC0415
  *lead, length, heads, qk_dim = query.shape
  kv_length, value_dim = key.shape[-3], value.shape[-1]
  if length > kv_length:
    raise ValueError(f"flash attention takes at most as many queries as keys: {length} > "
                     f"{kv_length}")
  flat = lambda x: x.reshape((-1,) + x.shape[-3:])  # noqa: E731
  query, key, value = flat(query), flat(key), flat(value)
  head_dim = max(16, qk_dim, min(value_dim, FLASH_HEAD_DIM))  # Triton's dots want >= 16
  groups = -(-value_dim // head_dim)  # value heads per query/key head
  pad_last = lambda x, n: jnp.pad(x, [(0, 0)] * 3 + [(0, n - x.shape[-1])])  # noqa: E731
  query, key = pad_last(query, head_dim), pad_last(key, head_dim)
  value = pad_last(value, groups * head_dim).reshape(value.shape[:2] + (heads * groups, head_dim))
  query, key = (jnp.repeat(x, groups, axis=2) for x in (query, key))
  block = min(FLASH_BLOCK, max(16, 1 << (kv_length - 1).bit_length()))
  padded = -(-kv_length // block) * block
  segments = None
  if padded != length or padded != kv_length:
    pad_len = lambda x: jnp.pad(  # noqa: E731
        x, [(0, 0), (0, padded - x.shape[1]), (0, 0), (0, 0)])
    query, key, value = pad_len(query), pad_len(key), pad_len(value)
    segments = jnp.broadcast_to((jnp.arange(padded) < kv_length).astype(jnp.int32),
                                (query.shape[0], padded))
  small = min(block, 32)
  blocks = pallas_attention.BlockSizes(block_q=block, block_k=block, block_q_dkv=small,
                                       block_kv_dkv=small, block_q_dq=small, block_kv_dq=small)
  out = pallas_attention.mha(query, key, value, segments, sm_scale=scale, block_sizes=blocks,
                             interpret=interpret)
  out = out[:, :length].reshape(out.shape[:1] + (length, heads, groups * head_dim))
  return out[..., :value_dim].reshape(tuple(lead) + (length, heads, value_dim))


def attend(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
           impl: str = "einsum", dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None, batch_axis: str | None = None
           ) -> tuple[jax.Array, jax.Array | None]:
  """Dispatches to the einsum core (the reference), its chunked form,
  ``jax.nn.dot_product_attention`` (fused) or the Pallas flash kernel (flash; on GPUs only:
  elsewhere flash means the chunked form, as its interpreter is far slower).

  The chunked, fused and flash paths return no weights (nothing is sown) and are used only
  without attention dropout; for the fused path a value wider than the keys (SAGAN)
  gets zero-padded q/k, which leaves every score unchanged.
  """
  if impl == "einsum" or (dropout_rate > 0.0 and dropout_rng is not None):
    return einsum_attention(query, key, value, scale=scale, dropout_rate=dropout_rate,
                            dropout_rng=dropout_rng, batch_axis=batch_axis)
  if impl == "flash" and flash_kernel_available():
    return flash_attention(query, key, value, scale=scale), None
  if impl in ("chunked", "flash"):
    return chunked_attention(query, key, value, scale=scale), None
  if impl != "fused":
    raise ValueError(f"attention_impl {impl!r} is unknown: use one of {ATTENTION_IMPLS}")
  extra = value.shape[-1] - query.shape[-1]
  if extra > 0:
    pad = [(0, 0)] * (query.ndim - 1) + [(0, extra)]
    query, key = jnp.pad(query, pad), jnp.pad(key, pad)
  return jax.nn.dot_product_attention(query, key, value, scale=scale), None


def _sow_weights(module: nn.Module, weights: jax.Array | None) -> None:
  if weights is not None:
    module.sow("intermediates", "attention_weights", weights)


class SelfAttention2D(nn.Module):
  """SAGAN self-attention over all H*W positions: ``gamma * attn(x) + x``.

  Query/key are 1x1 convolutions to C//8 channels, value a 1x1 convolution to C
  channels; gamma is a learned scalar starting at 0, so the layer starts as the
  identity. The attention weights ``(B, HW, HW)`` are sown as
  ``intermediates/attention_weights``.
  """
  scale: ScaleMode = "none"
  reduction: int = 8
  attention_impl: AttentionImpl = "einsum"
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    batch, height, width, channels = x.shape
    qk_channels = channels // self.reduction
    if qk_channels < 1:
      raise ValueError(
          f"SelfAttention2D needs at least {self.reduction} channels for its "
          f"C//{self.reduction} query/key, got {channels}")
    conv1x1 = lambda features, name: nn.Conv(  # noqa: E731
        features, (1, 1), dtype=self.dtype, name=name, **layer_init(self.init_style, channels))
    positions = height * width
    query = conv1x1(qk_channels, "query")(x).reshape(batch, positions, 1, qk_channels)
    key = conv1x1(qk_channels, "key")(x).reshape(batch, positions, 1, qk_channels)
    value = conv1x1(channels, "value")(x).reshape(batch, positions, 1, channels)
    out, weights = attend(query, key, value, scale=attention_scale(self.scale, qk_channels),
                          impl=self.attention_impl)
    _sow_weights(self, None if weights is None else weights[:, 0])
    gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
    out = out.reshape(batch, height, width, channels)
    return (gamma.astype(out.dtype) * out + x).astype(x.dtype)


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention: ``query``/``key``/``value`` projections (``nn.Dense``
  parameters, computed together by ``layers.QKVProjection``), attention, an ``out`` Dense.

  Attention weights ``(B, heads, N, N)`` are sown as ``intermediates/attention_weights``.
  """
  num_heads: int
  scale: ScaleMode = "inv_sqrt_dim"
  attention_dropout_rate: float = 0.0
  attention_impl: AttentionImpl = "einsum"
  batch_axis: str | None = None   # see layers.apply_dropout
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool = True,
               num_queries: int | None = None) -> jax.Array:
    """``[batch, length, dim] -> [batch, num_queries or length, dim]``.

    With ``num_queries`` only the first ``num_queries`` tokens ask (all tokens are
    still keys and values): the same outputs for those tokens, for less work.
    """
    chex.assert_rank(x, 3)
    batch, _, dim = x.shape
    if self.num_heads < 1 or dim % self.num_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be positive and divide the model "
          f"dimension {dim}")
    projection = QKVProjection(self.num_heads, self.init_style, self.dtype)
    nn.share_scope(self, projection)  # its query/key/value parameters are this layer's
    query, key, value = projection(x, num_queries)

    dropout_rng = None
    if self.attention_dropout_rate > 0.0 and not deterministic:
      dropout_rng = self.make_rng("dropout")
    out, weights = attend(
        query, key, value, scale=attention_scale(self.scale, dim // self.num_heads),
        impl=self.attention_impl, dropout_rate=self.attention_dropout_rate,
        dropout_rng=dropout_rng, batch_axis=self.batch_axis)
    _sow_weights(self, weights)
    out = out.reshape(batch, query.shape[1], dim)
    return Dense(dim, self.init_style, self.dtype, name="out")(out)
