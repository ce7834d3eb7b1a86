"""Dropout with a cheap counter-based mask that XLA fuses into the dropout itself.

``flax.linen.Dropout`` draws its mask with ``jax.random.bernoulli``: a separate
ThreeFry (or, with rbg keys, RngBitGenerator) kernel per layer. On a CPU those kernels
were the largest single item of the seed ViT's train step (about a third of it with
rbg keys). Here each entry's bits are a keyed hash of its index: MurmurHash3's 32-bit
finaliser, applied twice with two words of the layer's PRNG key, which is pure
elementwise integer math that XLA fuses with the ``where``/scale. Dropout needs
independent fair coin flips, not cryptographic strength; ``tests/test_dropout.py``
checks the keep rate, independence across keys and neighbours, and determinism.
Measured in ``experiments/README.md``.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finaliser: a bijection on uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 bits of ``shape``: a pure function of ``key`` (any typed PRNG key) and position."""
  words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  if words.size < 2:
    raise ValueError(f"a PRNG key with at least 2 words is needed, got {words.size}")
  counter = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  return _fmix32(_fmix32(counter ^ words[0]) + words[1])


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """Boolean mask of ``shape``; each entry is True (kept) with probability ``1 - rate``."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  threshold = min(round((1.0 - rate) * 2.0**32), 2**32 - 1)
  return random_bits(key, shape) < jnp.uint32(threshold)


def apply_dropout(x: jax.Array, key: jax.Array, rate: float,
                  full_shape: tuple[int, ...] | None = None) -> jax.Array:
  """Inverted dropout: zero entries with probability ``rate``, scale the rest by 1/(1-rate).

  With ``full_shape``, ``x`` is the leading corner ``full[:n0, :n1, ...]`` of a tensor
  of that shape and gets exactly the entries of that tensor's mask (computing only a
  slice of a model must not change its random draws).
  """
  if rate == 0.0:
    return x
  mask = keep_mask(key, rate, tuple(full_shape or x.shape))
  if full_shape is not None:
    mask = mask[tuple(slice(0, n) for n in x.shape)]
  scale = jnp.asarray(1.0 / (1.0 - rate), x.dtype)
  return jnp.where(mask, x * scale, jnp.zeros_like(x))


class Dropout(nn.Module):
  """Drop-in for ``nn.Dropout`` (same ``'dropout'`` rng collection, same semantics)."""
  rate: float
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None,
               full_shape: tuple[int, ...] | None = None) -> jax.Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    return apply_dropout(x, self.make_rng("dropout"), self.rate, full_shape)
