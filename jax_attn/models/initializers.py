"""Initialisers Flax does not have: PyTorch's layer defaults, and airbench's dirac filters."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def pytorch_defaults(fan_in: int, pytorch: bool = True) -> dict[str, Any]:
  """``kernel_init``/``bias_init`` of a Dense or Conv with ``fan_in`` inputs as PyTorch's
  ``nn.Linear``/``nn.Conv2d`` defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weights
  (kaiming_uniform with a=sqrt(5)) and the bias; Flax's defaults (lecun_normal, zeros) when
  not ``pytorch``. The notebook's networks train as they do in PyTorch only from PyTorch's."""
  if not pytorch:
    return {"kernel_init": nn.initializers.lecun_normal(), "bias_init": nn.initializers.zeros}
  bound = 1.0 / math.sqrt(fan_in)

  def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return {"kernel_init": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
          "bias_init": bias_init}


def dirac(base: Any) -> Any:
  """``base``'s conv kernel ``[kh, kw, in, out]`` with its first ``min(in, out)`` filters set to
  the identity (1 at the centre tap of the matching channel), as ``torch.nn.init.dirac_`` on
  those filters: a conv that starts as a pass-through trains fast (airbench)."""
  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    kernel = base(key, shape, dtype)
    kh, kw, fan_in, fan_out = shape
    n = min(fan_in, fan_out)
    identity = jnp.zeros((kh, kw, fan_in, n), dtype).at[kh // 2, kw // 2, jnp.arange(n),
                                                         jnp.arange(n)].set(1)
    return kernel.at[..., :n].set(identity)
  return init
