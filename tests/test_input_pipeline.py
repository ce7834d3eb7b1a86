"""Epoch order, resumable batches, per-process slices, eval padding and augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from jax_attn import data
from jax_attn.data import augment
from jax_attn.data import pipeline as input_pipeline

SPLIT = data.SyntheticSource(100, 8).load("train")


def _labels(batches):
  return [b["label"].tolist() for b in batches]


def test_order_is_a_function_of_seed_and_epoch():
  np.testing.assert_array_equal(input_pipeline.epoch_order(3, 1, 100),
                                input_pipeline.epoch_order(3, 1, 100))
  assert not np.array_equal(input_pipeline.epoch_order(3, 1, 100),
                            input_pipeline.epoch_order(3, 2, 100))
  assert not np.array_equal(input_pipeline.epoch_order(3, 1, 100),
                            input_pipeline.epoch_order(4, 1, 100))
  assert sorted(input_pipeline.epoch_order(3, 1, 100)) == list(range(100))


def test_resume_mid_epoch_yields_the_remaining_batches():
  full = list(input_pipeline.train_batches(SPLIT, seed=0, epoch=2, global_batch=16))
  rest = list(input_pipeline.train_batches(SPLIT, seed=0, epoch=2, global_batch=16, first_step=4))
  assert len(full) == 6  # 100 // 16: the ragged remainder is left out
  for a, b in zip(full[4:], rest):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert _labels(full[4:]) == _labels(rest)


def test_processes_take_contiguous_slices_of_the_global_batch(monkeypatch):
  whole = list(input_pipeline.train_batches(SPLIT, seed=1, epoch=0, global_batch=16))
  parts = []
  for index in range(4):
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setattr(jax, "process_index", lambda i=index: i)
    parts.append(list(input_pipeline.train_batches(SPLIT, seed=1, epoch=0, global_batch=16)))
  for step, batch in enumerate(whole):
    joined = np.concatenate([p[step]["image"] for p in parts])
    np.testing.assert_array_equal(joined, batch["image"])
    np.testing.assert_array_equal(np.concatenate([p[step]["position"] for p in parts]),
                                  np.arange(16))


def test_eval_batches_count_every_example_once():
  batches = list(input_pipeline.eval_batches(SPLIT, 32))
  assert len(batches) == 4 and all(len(b["label"]) == 32 for b in batches)
  assert sum(int(b["mask"].sum()) for b in batches) == 100
  np.testing.assert_array_equal(
      np.concatenate([b["label"][b["mask"]] for b in batches]), SPLIT.labels)


def test_prefetch_keeps_order_and_propagates_errors():
  assert list(input_pipeline.prefetch(iter(range(5)), lambda x: x * 2)) == [0, 2, 4, 6, 8]

  def broken():
    yield 1
    raise RuntimeError("disk gone")
  with pytest.raises(RuntimeError, match="disk gone"):
    list(input_pipeline.prefetch(broken(), lambda x: x))


def test_reference_normalisation():
  x = jnp.array([[[[0, 255, 51]]]], jnp.uint8)
  np.testing.assert_allclose(augment.normalize(x, "reference"), [[[[-1.0, 1.0, -0.6]]]], atol=1e-6)


def test_augmentation_is_per_example_and_repeatable():
  images = jnp.asarray(SPLIT.images[:8])
  config = tiny.augment(crop_padding=4, flip=True)
  positions = jnp.arange(8)
  a = augment.preprocess(images, config, jax.random.key(0), positions)
  b = augment.preprocess(images, config, jax.random.key(0), positions)
  c = augment.preprocess(images, config, jax.random.key(1), positions)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (8, 8, 8, 3) and not np.array_equal(a, c)
  plain = augment.preprocess(images, tiny.augment())
  assert not np.array_equal(a, plain)
  # example i's augmentation depends only on its position, not on its batch-mates
  one = augment.preprocess(images[3:4], config, jax.random.key(0), positions[3:4])
  np.testing.assert_array_equal(one[0], a[3])


def test_flip_only_mirrors():
  images = jnp.asarray(SPLIT.images[:16])
  config = tiny.augment(flip=True)
  out = augment.preprocess(images, config, jax.random.key(0), jnp.arange(16))
  plain = augment.normalize(images, "reference")
  for o, p in zip(out, plain):
    assert np.array_equal(o, p) or np.array_equal(o, p[:, ::-1])
