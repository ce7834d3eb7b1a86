"""Dense layers: nn.Dense's parameters and values, with the CPU weight-gradient path."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attn import layers


@pytest.mark.parametrize("shape", [(6, 8), (2, 5, 8)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_values_and_gradients_match_plain_matmul(shape, dtype):
  x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
  kernel = jax.random.normal(jax.random.key(1), (8, 3)).astype(dtype)
  cotangent = jax.random.normal(jax.random.key(2), shape[:-1] + (3,)).astype(dtype)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.float32(layers.matmul(x, kernel)), np.float32(x @ kernel),
                             rtol=tol, atol=tol)
  ours = jax.vjp(layers.matmul, x, kernel)[1](cotangent)
  plain = jax.vjp(lambda a, b: a @ b, x, kernel)[1](cotangent)
  for got, want in zip(ours, plain):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)


def test_cpu_weight_gradient_is_an_ordinary_product():
  """On a CPU the weight gradient reads a transposed copy of x, so XLA sees ``A @ B``."""
  if jax.default_backend() != "cpu":
    pytest.skip("CPU-only path")
  x, kernel = jnp.ones((32, 8)), jnp.ones((8, 4))
  grad = lambda k: jax.grad(lambda k: jnp.sum(layers.matmul(x, k) ** 2))(k)  # noqa: E731
  hlo = jax.jit(grad).lower(kernel).as_text()
  assert "opt-barrier" in hlo or "optimization_barrier" in hlo


def test_dense_is_nn_dense():
  x = jax.random.normal(jax.random.key(0), (4, 7, 16))
  for style, expected_init in (("flax", nn.Dense(5)), ("torch", None)):
    layer = layers.Dense(5, init_style=style)
    variables = layer.init(jax.random.key(1), x)
    chex.assert_shape(variables["params"]["kernel"], (16, 5))
    if expected_init is not None:
      chex.assert_trees_all_close(variables, expected_init.init(jax.random.key(1), x))
    reference = nn.Dense(5).apply(variables, x)
    np.testing.assert_allclose(layer.apply(variables, x), reference, rtol=1e-5, atol=1e-5)


def test_dense_params_are_nn_dense_parameters_unapplied():
  """The fused query/key/value projection keeps three nn.Dense parameter trees."""
  dense = nn.Dense(16).init(jax.random.key(0), jnp.ones((2, 5, 16)))
  chex.assert_trees_all_close(
      layers.DenseParams(16, init_style="flax").init(jax.random.key(0), 16), dense)
