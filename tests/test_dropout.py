"""The fused counter-hash dropout: keep rate, independence, determinism, semantics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attn.layers import Dropout, apply_dropout, keep_mask, random_bits


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_keep_rate_matches(rate):
  mask = np.asarray(keep_mask(jax.random.key(0), rate, (1000, 1000)))
  # 1e6 Bernoulli draws: the standard error is <= 0.0005, so 0.003 is a 6-sigma bound.
  assert abs(mask.mean() - (1.0 - rate)) < 0.003


def test_bits_are_uniform_and_independent():
  bits = np.asarray(random_bits(jax.random.key(7), (512, 1024))).astype(np.float64)
  u = bits / 2.0**32
  assert abs(u.mean() - 0.5) < 0.002 and abs(u.var() - 1 / 12) < 0.002
  histogram = np.histogram(u, bins=16, range=(0, 1))[0] / u.size
  np.testing.assert_allclose(histogram, 1 / 16, atol=0.002)
  flat = u.reshape(-1) - 0.5
  for lag in (1, 2, 1024):  # neighbours in a row, and the same column of the next row
    assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.01
  for bit in range(32):  # every bit is a fair coin
    assert abs(((bits.astype(np.uint64) >> bit) & 1).mean() - 0.5) < 0.005


def test_masks_are_deterministic_per_key_and_independent_across_keys():
  key = jax.random.key(3)
  a = np.asarray(keep_mask(key, 0.5, (256, 256)))
  np.testing.assert_array_equal(a, keep_mask(key, 0.5, (256, 256)))
  others = [np.asarray(keep_mask(k, 0.5, (256, 256))) for k in
            (jax.random.fold_in(key, 1), jax.random.fold_in(key, 2), jax.random.key(4))]
  for b in others:  # independent fair masks agree on half of the entries
    assert abs((a == b).mean() - 0.5) < 0.01


def test_inverted_dropout_keeps_the_mean_and_zeroes_the_rest():
  x = jnp.ones((400, 500))
  y = np.asarray(apply_dropout(x, jax.random.key(0), 0.2))
  assert set(np.unique(y)) == {0.0, np.float32(1.25)}
  assert abs(y.mean() - 1.0) < 0.01
  assert apply_dropout(x, jax.random.key(0), 0.0) is x
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    keep_mask(jax.random.key(0), 1.0, (2,))


def test_module_is_a_drop_in_for_flax_dropout():
  x = jax.random.normal(jax.random.key(0), (8, 16))
  layer = Dropout(0.5)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  out = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(out, layer.apply({}, x, deterministic=False,
                                                 rngs={"dropout": jax.random.key(1)}))
  kept = np.asarray(out) != 0
  np.testing.assert_allclose(np.asarray(out)[kept], 2 * np.asarray(x)[kept], rtol=1e-6)
  with pytest.raises(Exception, match="dropout"):  # needs the same rng collection as nn.Dropout
    layer.apply({}, x, deterministic=False)
  assert isinstance(layer, nn.Module)


def test_a_slice_gets_the_full_tensors_mask():
  """Computing only part of a layer's output must not change the random draws."""
  full = jnp.ones((3, 5, 4))
  expected = np.asarray(apply_dropout(full, jax.random.key(7), 0.5))[:, :2]
  got = apply_dropout(full[:, :2], jax.random.key(7), 0.5, full_shape=full.shape)
  np.testing.assert_array_equal(got, expected)
  own = apply_dropout(full[:, :2], jax.random.key(7), 0.5)
  assert not np.array_equal(own, expected)  # without full_shape the mask is the slice's own
