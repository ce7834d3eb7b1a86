"""The einsum attention core and both attention layers."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attn.models.attention import (MultiHeadSelfAttention, SelfAttention2D, attention_scale,
                                       chunked_attention, einsum_attention, flash_attention,
                                       implementation)


def test_core_matches_naive_softmax_attention():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(2, 5, 3, 4)).astype(np.float32) for _ in range(3))
  out, weights = einsum_attention(q, k, v, scale=0.5)
  for b in range(2):
    for h in range(3):
      s = q[b, :, h] @ k[b, :, h].T * 0.5
      w = np.exp(s - s.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      np.testing.assert_allclose(weights[b, h], w, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(out[b, :, h], w @ v[b, :, h], rtol=1e-5, atol=1e-5)


def test_scales():
  assert attention_scale("inv_sqrt_dim", 16) == pytest.approx(0.25)
  assert attention_scale("inv_dim", 16) == pytest.approx(1 / 16)
  assert attention_scale("none", 16) == 1.0


def test_softmax_is_float32_for_bfloat16_inputs():
  x = jnp.ones((1, 4, 1, 2), jnp.bfloat16)
  out, weights = einsum_attention(x, x, x, scale=1.0)
  assert weights.dtype == jnp.float32 and out.dtype == jnp.bfloat16


def _sown(variables_state):
  (weights,) = jax.tree.leaves(variables_state["intermediates"])
  return weights


class SelfAttention2DTest(chex.TestCase):

  def test_identity_at_init_and_weights_shape(self):
    x = jax.random.normal(jax.random.key(0), (3, 4, 5, 16))
    layer = SelfAttention2D()
    variables = layer.init(jax.random.key(1), x)
    y, state = layer.apply(variables, x, mutable=["intermediates"])
    np.testing.assert_array_equal(y, x)
    weights = _sown(state)
    chex.assert_shape(weights, (3, 1, 20, 20))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)

  def test_nonzero_gamma_changes_output(self):
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    layer = SelfAttention2D()
    variables = layer.init(jax.random.key(1), x)
    variables = {"params": {**variables["params"], "gamma": jnp.float32(0.7)}}
    assert not np.allclose(layer.apply(variables, x), x)

  def test_too_few_channels(self):
    with pytest.raises(ValueError, match="at least 8 channels"):
      SelfAttention2D().init(jax.random.key(0), jnp.ones((1, 4, 4, 4)))


class MultiHeadSelfAttentionTest(chex.TestCase):

  def test_weights_rows_sum_to_one(self):
    x = jax.random.normal(jax.random.key(0), (2, 7, 16))
    layer = MultiHeadSelfAttention(num_heads=4)
    variables = layer.init(jax.random.key(1), x)
    y, state = layer.apply(variables, x, mutable=["intermediates"])
    chex.assert_shape(y, (2, 7, 16))
    weights = _sown(state)
    chex.assert_shape(weights, (2, 4, 7, 7))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)

  def test_permutation_equivariant(self):
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    layer = MultiHeadSelfAttention(num_heads=2)
    variables = layer.init(jax.random.key(1), x)
    perm = np.array([3, 0, 5, 1, 4, 2])
    y = layer.apply(variables, x)
    y_perm = layer.apply(variables, x[:, perm])
    np.testing.assert_allclose(y_perm, y[:, perm], rtol=1e-5, atol=1e-5)

  def test_heads_must_divide_dim(self):
    with pytest.raises(ValueError, match="num_heads=3 .* divide .* 16"):
      MultiHeadSelfAttention(num_heads=3).init(jax.random.key(0), jnp.ones((1, 4, 16)))

  def test_queries_may_be_fewer_than_keys(self):
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    layer = MultiHeadSelfAttention(num_heads=2)
    variables = layer.init(jax.random.key(1), x)
    np.testing.assert_allclose(layer.apply(variables, x[:, :1], x), layer.apply(variables, x)[:, :1],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["chunked", "flash"])
@pytest.mark.parametrize("layer, shape", [
    (SelfAttention2D(), (3, 4, 4, 16)), (MultiHeadSelfAttention(num_heads=2), (3, 5, 8))])
def test_other_impls_match_einsum_values_and_gradients(layer, shape, impl):
  x = jax.random.normal(jax.random.key(0), shape)
  variables = layer.init(jax.random.key(1), x)
  if "gamma" in variables["params"]:
    variables = {"params": {**variables["params"], "gamma": jnp.float32(0.5)}}
  def loss(impl):
    def value(v, x):
      with implementation(impl):
        return jnp.sum(jnp.sin(layer.apply(v, x)))
    return value

  with implementation(impl):
    out = layer.apply(variables, x)
  np.testing.assert_allclose(out, layer.apply(variables, x), rtol=1e-5, atol=1e-5)
  expected = jax.grad(loss("einsum"), argnums=(0, 1))(variables, x)
  got = jax.grad(loss(impl), argnums=(0, 1))(variables, x)
  chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, queries, qk_dim, value_dim, scale", [
    ((2, 36, 1), 36, 4, 80, 1.0),     # SAGAN: one head, value wider than the keys, 6x6 positions
    ((2, 17, 2), 17, 8, 8, 8**-0.5),  # ViT: two heads, 16 patches + <class>, 1/sqrt(d)
    ((2, 17, 2), 1, 8, 8, 8**-0.5),   # the ViT's last block: the <class> query alone
])
def test_flash_kernel_matches_einsum_values_and_gradients(shape, queries, qk_dim, value_dim,
                                                          scale):
  """The Pallas kernel (run by its interpreter here, compiled on GPUs) computes the einsum
  core, through the head split and the length padding, within 1e-4 relative in float32."""
  batch, length, heads = shape
  q = jax.random.normal(jax.random.key(0), (batch, queries, heads, qk_dim))
  k = jax.random.normal(jax.random.key(1), shape + (qk_dim,))
  v = jax.random.normal(jax.random.key(2), shape + (value_dim,))
  cotangent = jax.random.normal(jax.random.key(3), (batch, queries, heads, value_dim))
  einsum = lambda q, k, v: einsum_attention(q, k, v, scale=scale)[0]  # noqa: E731
  flash = lambda q, k, v: flash_attention(q, k, v, scale=scale, interpret=True)  # noqa: E731
  expected, einsum_vjp = jax.vjp(einsum, q, k, v)
  got, flash_vjp = jax.vjp(flash, q, k, v)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  for g, e in zip(flash_vjp(cotangent), einsum_vjp(cotangent)):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(e))))


def test_chunked_core_handles_a_batch_that_chunks_do_not_divide():
  q, k, v = (jax.random.normal(jax.random.key(i), (5, 6, 2, 4)) for i in range(3))
  expected, _ = einsum_attention(q, k, v, scale=0.5)
  np.testing.assert_allclose(chunked_attention(q, k, v, scale=0.5, chunk=2), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["chunked", "flash"])  # flash off GPUs: the chunked core
def test_chunked_impl_sows_nothing(impl):
  layer = SelfAttention2D()
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
  variables = layer.init(jax.random.key(1), x)
  with implementation(impl):
    out, state = layer.apply(variables, x, mutable=["intermediates"])
  assert out.shape == x.shape and not state.get("intermediates")


@pytest.mark.parametrize("call, message", [
    (lambda: einsum_attention(jnp.ones((2, 5, 1, 4)), jnp.ones((2, 5, 1, 3)),
                              jnp.ones((2, 5, 1, 3)), scale=1.0), "4 != 3"),  # q/k widths
    (lambda: einsum_attention(jnp.ones((2, 5, 1, 4)), jnp.ones((3, 5, 1, 4)),
                              jnp.ones((3, 5, 1, 4)), scale=1.0), "shape prefix"),  # batches
    (lambda: einsum_attention(jnp.ones((2, 5, 1, 4)), jnp.ones((2, 6, 1, 4)),
                              jnp.ones((2, 5, 1, 4)), scale=1.0), "shapes"),  # keys vs values
    (lambda: SelfAttention2D().init(jax.random.key(0), jnp.ones((4, 4, 16))), "rank"),
    (lambda: MultiHeadSelfAttention(2).init(jax.random.key(0), jnp.ones((4, 16))), "rank"),
])
def test_the_shape_assertions_fire(call, message):
  """chex's checks of the core's and the layers' inputs."""
  with pytest.raises(AssertionError, match=message):
    call()


@pytest.mark.parametrize("layer, shape", [
    (SelfAttention2D(), (2, 6, 6, 80)),  # value wider than the keys: split into 64-wide heads
    (MultiHeadSelfAttention(num_heads=2), (2, 17, 16))])
def test_flash_path_of_the_layers_gives_the_einsum_layers_output(monkeypatch, layer, shape):
  """The layers' flash wiring (head split, padding, class-token queries) through the kernel's
  interpreter, as a GPU runs it: the einsum layer's values and gradients."""
  from jax_attn.models import attention
  calls = []
  kernel = attention.flash_attention
  monkeypatch.setattr(attention, "flash_kernel_available", lambda: True)
  monkeypatch.setattr(attention, "flash_attention", lambda *a, **k: calls.append(1) or kernel(
      *a, **k, interpret=True))
  x = jax.random.normal(jax.random.key(0), shape)
  variables = layer.init(jax.random.key(1), x)
  if "gamma" in variables["params"]:
    variables = {"params": {**variables["params"], "gamma": jnp.float32(0.5)}}

  def loss(impl, v, x):
    with implementation(impl):
      return jnp.sum(jnp.sin(layer.apply(v, x)))

  np.testing.assert_allclose(loss("flash", variables, x), loss("einsum", variables, x), rtol=1e-4)
  assert calls  # the kernel ran, not the chunked core
  got = jax.grad(functools.partial(loss, "flash"), argnums=(0, 1))(variables, x)
  expected = jax.grad(functools.partial(loss, "einsum"), argnums=(0, 1))(variables, x)
  chex.assert_trees_all_close(got, expected, rtol=1e-3, atol=1e-4)
  if isinstance(layer, MultiHeadSelfAttention):  # the last block's query: the class token
    with implementation("flash"):
      one = layer.apply(variables, x[:, :1], x)
    np.testing.assert_allclose(one, layer.apply(variables, x)[:, :1], rtol=1e-4, atol=1e-5)


def test_flash_kernel_runs_in_its_interpreter_off_gpus_and_wants_no_more_queries_than_keys():
  q, k, v = (jax.random.normal(jax.random.key(i), (1, 5, 1, 8)) for i in range(3))
  np.testing.assert_allclose(flash_attention(q, k, v, scale=0.5),
                             einsum_attention(q, k, v, scale=0.5)[0], rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError) as e:
    flash_attention(jnp.ones((1, 6, 1, 8)), k, v, scale=0.5)
  assert str(e.value) == "flash attention takes at most as many queries as keys: 6 > 5"
