"""Dense layers (``nn.Dense``'s parameters) whose weight gradient runs fast on a CPU.

The weight gradient of ``x @ kernel`` is ``x^T @ grad``: a product whose left operand
is read transposed. XLA:CPU hands ordinary products to its YNNPACK library but computes
this form with its own slower kernel (measured in ``experiments/README.md``). On a CPU
backend ``matmul`` therefore writes ``x^T`` out once (an optimisation barrier stops XLA
from folding the transpose back into the product), after which the product is an
ordinary one. Values and gradients are the same; elsewhere it is a plain ``@``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jax_attn.initializers import InitStyle, param_initializers


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
