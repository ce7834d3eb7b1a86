"""One einsum attention core and the two attention layers built on it.

Layout follows Flax: ``[batch..., length, heads, head_dim]``. The SAGAN layer is the one-head
case of the same core, so both models share every line of the math.

The core can run another way, chosen by the ``attention_impl`` setting through
``implementation(...)`` around ``model.apply`` (the layers take no such argument):
``einsum`` (the reference; sows the weights), ``chunked`` (the same core one image at a time,
recomputed for the gradient: the scores stay in a CPU's cache) or ``flash`` (JAX's Pallas
flash-attention kernel on GPUs: no ``[length, length]`` scores in memory, forward or backward;
``chunked`` elsewhere).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_attn.models.initializers import pytorch_defaults

ScaleMode = Literal["inv_sqrt_dim", "inv_dim", "none"]
FLASH_HEAD_DIM = 64  # the kernel's head dim when SAGAN's value (C channels) is split into heads
FLASH_BLOCK = 128    # query/key block of the flash kernel's forward pass

_IMPL = contextvars.ContextVar("attention_impl", default="einsum")


@contextlib.contextmanager
def implementation(impl: str) -> Iterator[None]:
  """Runs every attention layer traced inside the block with ``impl``. Enter it inside the
  traced function (a step body), so that a compiled step always has the same one."""
  token = _IMPL.set(impl)
  try:
    yield
  finally:
    _IMPL.reset(token)


def attention_scale(mode: str, head_dim: int) -> float:
  """Multiplier of the scores: 1/sqrt(d) (transformers), 1/d (the notebook's ViT), 1 (SAGAN)."""
  return {"inv_sqrt_dim": 1.0 / math.sqrt(head_dim), "inv_dim": 1.0 / head_dim,
          "none": 1.0}[mode]


def einsum_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float
                     ) -> tuple[jax.Array, jax.Array]:
  """softmax(q k^T * scale) v with the softmax in float32.

  Args:
    query: ``[..., q_len, heads, d]``; key: ``[..., kv_len, heads, d]``;
      value: ``[..., kv_len, heads, dv]`` (dv may differ from d, as in SAGAN).
    scale: multiplier applied to the raw scores.

  Returns:
    ``(out [..., q_len, heads, dv], weights [..., heads, q_len, kv_len])``; the weights are
    the float32 softmax, rows summing to one.
  """
  chex.assert_equal_shape_prefix((query, key, value), query.ndim - 3)
  chex.assert_equal_shape((key[..., :1], value[..., :1]))
  chex.assert_equal(query.shape[-1], key.shape[-1])
  scores = jnp.einsum("...qhd,...khd->...hqk", query, key,
                      preferred_element_type=jnp.float32) * scale
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("...hqk,...khd->...qhd", weights.astype(value.dtype), value)
  return out, weights


def chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
                      chunk: int = 1) -> jax.Array:
  """The einsum core over chunks of ``chunk`` images, recomputed in the backward pass: the
  ``[chunk, heads, q_len, kv_len]`` scores live only inside one ``lax.map`` step."""
  core = jax.checkpoint(lambda qkv: einsum_attention(*qkv, scale=scale)[0])
  return jax.lax.map(core, (query, key, value), batch_size=chunk)


def flash_kernel_available() -> bool:
  """Whether ``flash`` runs the Pallas kernel compiled by Triton (GPUs), not its stand-ins."""
  return jax.default_backend() == "gpu"


def flash_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float,
                    interpret: bool | None = None) -> jax.Array:
  """The einsum core's output without the scores in memory: JAX's own Pallas kernel
  (``jax.experimental.pallas.ops.gpu.attention.mha``, Triton, with its custom VJP), or its
  interpreter (``interpret``, the default off GPUs: slow, for tests).

  The kernel wants one head dim for q, k and v and lengths that are multiples of its blocks.
  Both adaptations are exact: a value wider than the keys (SAGAN: C against C/8) is split
  into heads of ``FLASH_HEAD_DIM`` channels that share the (zero-padded, so unchanged) query
  and key; lengths are padded to a multiple of the block, the padding keys in a segment of
  their own that no real query attends to. Queries may be fewer than keys, not more.
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


def attend(module: nn.Module, query: jax.Array, key: jax.Array, value: jax.Array,
           scale: float) -> jax.Array:
  """The core under the current ``implementation``; the einsum core sows its weights into
  ``module``'s ``intermediates/attention_weights``."""
  impl = _IMPL.get()
  if impl == "flash" and flash_kernel_available():
    return flash_attention(query, key, value, scale=scale)
  if impl in ("chunked", "flash"):
    return chunked_attention(query, key, value, scale=scale)
  out, weights = einsum_attention(query, key, value, scale=scale)
  module.sow("intermediates", "attention_weights", weights)
  return out


class SelfAttention2D(nn.Module):
  """SAGAN self-attention over all H*W positions: ``gamma * attention(x) + x``.

  Query and key are 1x1 convolutions to C//8 channels, value a 1x1 convolution to C
  channels; gamma is a learned scalar starting at 0, so the layer starts as the identity.
  The attention weights ``[B, 1, HW, HW]`` are sown as ``intermediates/attention_weights``.
  """
  scale: ScaleMode = "none"
  pytorch_init: bool = True  # initializers.pytorch_defaults
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    chex.assert_rank(x, 4)
    batch, height, width, channels = x.shape
    if channels < 8:
      raise ValueError(f"SelfAttention2D needs at least 8 channels for its C//8 query/key, "
                       f"got {channels}")
    conv1x1 = lambda features, name: nn.Conv(  # noqa: E731
        features, (1, 1), dtype=self.dtype, name=name,
        **pytorch_defaults(channels, self.pytorch_init))
    tokens = lambda y: y.reshape(batch, height * width, 1, y.shape[-1])  # noqa: E731
    query = tokens(conv1x1(channels // 8, "query")(x))
    key = tokens(conv1x1(channels // 8, "key")(x))
    value = tokens(conv1x1(channels, "value")(x))
    out = attend(self, query, key, value, attention_scale(self.scale, channels // 8))
    gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
    return (gamma.astype(out.dtype) * out.reshape(x.shape) + x).astype(x.dtype)


class MultiHeadSelfAttention(nn.Module):
  """Multi-head attention: ``query``, ``key``, ``value`` and ``out`` Dense layers around the
  core. ``inputs_kv`` defaults to ``inputs_q`` (self-attention); the ViT's last block passes
  its class token alone as the query. Weights ``[B, heads, q_len, kv_len]`` are sown as
  ``intermediates/attention_weights``."""
  num_heads: int
  scale: ScaleMode = "inv_sqrt_dim"
  pytorch_init: bool = False  # initializers.pytorch_defaults
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array | None = None) -> jax.Array:
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    chex.assert_rank((inputs_q, inputs_kv), 3)
    dim = inputs_q.shape[-1]
    if self.num_heads < 1 or dim % self.num_heads:
      raise ValueError(f"num_heads={self.num_heads} must be positive and divide the model "
                       f"dimension {dim}")
    head_dim = dim // self.num_heads

    dense = lambda name: nn.Dense(dim, dtype=self.dtype, name=name,  # noqa: E731
                                  **pytorch_defaults(dim, self.pytorch_init))

    def heads(inputs: jax.Array, name: str) -> jax.Array:
      return dense(name)(inputs).reshape(inputs.shape[:2] + (self.num_heads, head_dim))

    query, key, value = (heads(inputs_q, "query"), heads(inputs_kv, "key"),
                         heads(inputs_kv, "value"))
    out = attend(self, query, key, value, attention_scale(self.scale, head_dim))
    return dense("out")(out.reshape(inputs_q.shape[:2] + (dim,)))
