"""Parameter initialisation styles: PyTorch's defaults (the reference) or Flax's."""
from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

InitStyle = Literal["torch", "flax"]


def layer_init(style: str, fan_in: int) -> dict[str, Any]:
  """``kernel_init``/``bias_init`` keyword arguments for a Dense or Conv with ``fan_in`` inputs.

  ``torch``: ``nn.Linear``/``nn.Conv2d`` defaults, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
  weights (kaiming_uniform with a=sqrt(5)) and biases. ``flax``: lecun_normal and zeros.
  """
  if style == "flax":
    return {}
  if style != "torch":
    raise ValueError(f"init_style {style!r} is unknown: use 'torch' or 'flax'")
  bound = 1.0 / math.sqrt(fan_in)

  def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return {"kernel_init": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
          "bias_init": bias_init}


def param_initializers(style: str, fan_in: int) -> tuple[Any, Any]:
  """``(kernel_init, bias_init)`` for a layer that creates its own params: ``layer_init``'s
  choice, or for ``flax`` the ``nn.Dense``/``nn.Conv`` defaults (lecun_normal, zeros)."""
  inits = {"kernel_init": nn.initializers.lecun_normal(), "bias_init": nn.initializers.zeros,
           **layer_init(style, fan_in)}
  return inits["kernel_init"], inits["bias_init"]


def dirac(base: Any) -> Any:
  """``base``'s conv kernel ``[kh, kw, in, out]`` with its first ``min(in, out)`` filters set to
  the identity (1 at the centre tap of the matching channel, 0 elsewhere), as ``torch.nn.init.
  dirac_`` on those filters: a conv that starts as a pass-through trains fast (airbench)."""
  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    kernel = base(key, shape, dtype)
    kh, kw, fan_in, fan_out = shape
    n = min(fan_in, fan_out)
    identity = jnp.zeros((kh, kw, fan_in, n), dtype).at[kh // 2, kw // 2, jnp.arange(n),
                                                         jnp.arange(n)].set(1)
    return kernel.at[..., :n].set(identity)
  return init
