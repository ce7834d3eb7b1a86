"""The counter-hash dropout: keep rate, independence, determinism, semantics, device layout."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_attn.models.dropout import Dropout, keep_mask, random_bits


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
  layer = Dropout(0.2)
  y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
  assert set(np.unique(y)) == {0.0, np.float32(1.25)}
  assert abs(y.mean() - 1.0) < 0.01
  assert Dropout(0.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}) is x
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


def test_each_device_drops_its_rows_of_the_global_batchs_mask():
  """With ``batch_axis`` the masks do not depend on how the batch is split over devices."""
  x = jax.random.normal(jax.random.key(0), (8, 5, 4))
  rngs = {"dropout": jax.random.key(7)}
  whole = Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs)
  split = jax.vmap(lambda part: Dropout(0.5, batch_axis="devices").apply(
      {}, part, deterministic=False, rngs=rngs), axis_name="devices")(x.reshape(4, 2, 5, 4))
  np.testing.assert_array_equal(split.reshape(x.shape), whole)
  unaware = jax.vmap(lambda part: Dropout(0.5).apply({}, part, deterministic=False, rngs=rngs))(
      x.reshape(4, 2, 5, 4))
  assert not np.array_equal(unaware.reshape(x.shape), whole)  # the same mask on every device
