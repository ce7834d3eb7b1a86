"""The layers that exist for speed: each has a plain Flax layer's parameters (same names,
shapes and initial values) and outputs, and computes them in a form that is faster on a
CPU (measured in ``experiments/README.md``). The models use them by name:

- ``Dense``: ``nn.Dense`` whose weight gradient runs on XLA:CPU's fast matmul (``matmul``).
- ``Dropout``: ``nn.Dropout`` with a counter-hash mask that XLA fuses into the dropout.
- ``PatchEmbedding``: a stride-``p`` ``p x p`` ``nn.Conv`` computed as a reshape and a matmul.
- ``QKVProjection``: three ``nn.Dense`` named ``query``, ``key``, ``value`` as one matmul.
- ``last_block_queries``: when the ViT's last block may compute the class token alone.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jax_attn.initializers import InitStyle, param_initializers

# --- Dense: the CPU weight gradient --------------------------------------------------
# The weight gradient of ``x @ kernel`` is ``x^T @ grad``: a product whose left operand is
# read transposed. XLA:CPU hands ordinary products to its YNNPACK library but computes this
# form with its own slower kernel. On a CPU ``matmul`` therefore writes ``x^T`` out once (an
# optimisation barrier stops XLA from folding the transpose back into the product), after
# which the product is an ordinary one. Values and gradients are the same.


@jax.custom_vjp
def _cpu_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return x @ kernel


def _cpu_matmul_fwd(x: jax.Array, kernel: jax.Array):
  return x @ kernel, (x, kernel)


def _cpu_matmul_bwd(residuals, grad: jax.Array):
  x, kernel = residuals
  rows_x = x.reshape(-1, x.shape[-1])
  rows_grad = grad.reshape(-1, grad.shape[-1])
  kernel_grad = lax.optimization_barrier(rows_x.T) @ rows_grad
  return grad @ kernel.T, kernel_grad.astype(kernel.dtype)


_cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``x [..., in] @ kernel [in, out]``; on a CPU backend with the fast weight gradient."""
  if jax.default_backend() == "cpu":
    return _cpu_matmul(x, kernel)
  return x @ kernel


def _dense_params(module: nn.Module, features: int, init_style: str, in_features: int
                  ) -> tuple[jax.Array, jax.Array]:
  kernel_init, bias_init = param_initializers(init_style, in_features)
  return (module.param("kernel", kernel_init, (in_features, features)),
          module.param("bias", bias_init, (features,)))


class DenseParams(nn.Module):
  """The kernel and bias of an ``nn.Dense(features)`` (same names, shapes and init), unapplied."""
  features: int
  init_style: InitStyle = "torch"

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    return _dense_params(self, self.features, self.init_style, in_features)


class Dense(nn.Module):
  """``nn.Dense`` (same parameters and init) computed with ``matmul``, in ``dtype``."""
  features: int
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = _dense_params(self, self.features, self.init_style, x.shape[-1])
    return matmul(x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


# --- Dropout: a counter-hash mask -----------------------------------------------------
# ``nn.Dropout`` draws its mask with ``jax.random.bernoulli``: a separate ThreeFry (or
# RngBitGenerator) kernel per layer, on a CPU about a third of the seed ViT's train step.
# Here each entry's bits are a keyed hash of its index (MurmurHash3's 32-bit finaliser,
# applied twice with two words of the layer's PRNG key): elementwise integer math that XLA
# fuses with the ``where``/scale. Dropout needs independent fair coin flips, not
# cryptographic strength; ``tests/test_dropout.py`` checks the keep rate, independence
# across keys and neighbours, and determinism.


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finaliser: a bijection on uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def random_bits(key: jax.Array, shape: tuple[int, ...], offset: jax.Array | int = 0) -> jax.Array:
  """uint32 bits of ``shape``: a pure function of ``key`` (any typed PRNG key) and position;
  entry ``i`` (row-major) gets the bits of position ``offset + i``."""
  words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  if words.size < 2:
    raise ValueError(f"a PRNG key with at least 2 words is needed, got {words.size}")
  counter = (lax.iota(jnp.uint32, math.prod(shape)) + jnp.asarray(offset, jnp.uint32)
             ).reshape(shape)
  return _fmix32(_fmix32(counter ^ words[0]) + words[1])


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...],
              offset: jax.Array | int = 0) -> jax.Array:
  """Boolean mask of ``shape``; each entry is True (kept) with probability ``1 - rate``."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  threshold = min(round((1.0 - rate) * 2.0**32), 2**32 - 1)
  return random_bits(key, shape, offset) < jnp.uint32(threshold)


def apply_dropout(x: jax.Array, key: jax.Array, rate: float,
                  full_shape: tuple[int, ...] | None = None,
                  batch_axis: str | None = None) -> jax.Array:
  """Inverted dropout: zero entries with probability ``rate``, scale the rest by 1/(1-rate).

  With ``full_shape``, ``x`` is the leading corner ``full[:n0, :n1, ...]`` of a tensor
  of that shape and gets exactly the entries of that tensor's mask (computing only a
  slice of a model must not change its random draws). With ``batch_axis`` (the mapped axis
  the global batch is split over, in equal contiguous slices) the mask is this device's rows
  of the global batch's mask: dropout does not depend on the number of devices.
  """
  if rate == 0.0:
    return x
  shape = tuple(full_shape or x.shape)
  offset = 0
  if batch_axis is not None:
    offset = lax.axis_index(batch_axis).astype(jnp.uint32) * jnp.uint32(math.prod(shape))
  mask = keep_mask(key, rate, shape, offset)
  if full_shape is not None:
    mask = mask[tuple(slice(0, n) for n in x.shape)]
  scale = jnp.asarray(1.0 / (1.0 - rate), x.dtype)
  return jnp.where(mask, x * scale, jnp.zeros_like(x))


class Dropout(nn.Module):
  """Drop-in for ``nn.Dropout`` (same ``'dropout'`` rng collection, same semantics), with
  ``full_shape`` as in ``apply_dropout``."""
  rate: float
  deterministic: bool | None = None
  batch_axis: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None,
               full_shape: tuple[int, ...] | None = None) -> jax.Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    return apply_dropout(x, self.make_rng("dropout"), self.rate, full_shape, self.batch_axis)


# --- Layers of the ViT ------------------------------------------------------------------


class PatchEmbedding(nn.Module):
  """Non-overlapping ``p x p`` patches -> the token map ``[batch, height / p, width / p, dim]``.

  The parameters are exactly a stride-``p`` ``nn.Conv``'s (kernel ``[p, p, C, dim]``,
  bias), so checkpoints and imported PyTorch weights are unchanged, but it runs as a
  reshape and one matmul: on a CPU XLA's strided convolution was the seed ViT's most
  expensive op.
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
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, height // p, width // p, p * p * channels)
    kernel = kernel.reshape(p * p * channels, self.hidden_dim)
    return matmul(patches.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class QKVProjection(nn.Module):
  """Query, key and value heads ``[batch, tokens, heads, dim // heads]`` of ``x [batch,
  tokens, dim]``: three ``nn.Dense(dim)`` layers' parameters, applied as one matmul (their
  kernels side by side; on a CPU the seed ViT's small matmuls cost mostly per-op overhead).

  Attach it with ``nn.share_scope(attention_layer, projection)``: its ``query``, ``key`` and
  ``value`` parameters are then the attention layer's own, as three ``nn.Dense`` would be.
  With ``num_queries`` only the first ``num_queries`` tokens get queries.
  """
  num_heads: int
  init_style: InitStyle = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, num_queries: int | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    batch, length, dim = x.shape
    heads = (self.num_heads, dim // self.num_heads)
    projections = [DenseParams(dim, self.init_style, name=name)(dim)
                   for name in ("query", "key", "value")]
    kernel = jnp.concatenate([k for k, _ in projections], axis=1).astype(self.dtype)
    bias = jnp.concatenate([b for _, b in projections]).astype(self.dtype)
    x = x.astype(self.dtype)
    if num_queries is None or num_queries == length:
      qkv = (matmul(x, kernel) + bias).reshape(batch, length, 3, *heads)
      return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    query = matmul(x[:, :num_queries], kernel[:, :dim]) + bias[:dim]
    kv = (matmul(x, kernel[:, dim:]) + bias[dim:]).reshape(batch, length, 2, *heads)
    return query.reshape(batch, num_queries, *heads), kv[:, :, 0], kv[:, :, 1]


def last_block_queries(model: nn.Module, *, pooling: str, attention_dropout_rate: float,
                       train: bool) -> int | None:
  """How many leading tokens the ViT's last encoder block computes: ``1`` (the class token)
  when only its output is classified, else ``None`` (all tokens).

  The other tokens' outputs of the last block are never used, so skipping their queries,
  projections and MLPs gives exactly the same logits and gradients (~1/5 less work for the
  seed ViT). Not when attention weights are being collected (``intermediates``), with mean
  pooling, or with attention dropout in training (its mask covers every query).
  """
  if (pooling == "class" and not model.is_mutable_collection("intermediates")
      and (attention_dropout_rate == 0.0 or not train)):
    return 1
  return None
