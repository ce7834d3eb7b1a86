"""Epoch order, resumable batches, per-process slices, eval padding and augmentation."""
import time

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
  batches = list(input_pipeline.train_batches(SPLIT, seed=3, epoch=1, global_batch=16))
  index = np.concatenate([b["index"] for b in batches])
  assert len(batches) == 6 and all(len(b["label"]) == 16 for b in batches)
  np.testing.assert_array_equal(index, input_pipeline.epoch_order(3, 1, 100)[:96])
  assert input_pipeline.steps_per_epoch(16, 16) == 1


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


def test_prefetch_runs_at_most_size_ahead_and_stops_when_the_consumer_does():
  import threading
  made = []

  def endless():
    while True:
      made.append(len(made))
      yield made[-1]
  before = threading.active_count()
  batches = input_pipeline.prefetch(endless(), lambda x: x, size=2)
  assert next(batches) == 0
  time.sleep(0.2)
  assert len(made) <= 4  # the one consumed, two queued, one waiting for a slot
  batches.close()
  assert threading.active_count() == before  # the producer thread is gone
  assert len(made) <= 5


def test_train_batches_are_int32_and_a_too_small_split_is_one_error():
  batch = next(input_pipeline.train_batches(SPLIT, seed=1, epoch=0, global_batch=16))
  assert batch["index"].dtype == batch["position"].dtype == np.int32
  with pytest.raises(data.DataError) as e:
    input_pipeline.steps_per_epoch(100, 128)
  assert str(e.value) == ("the training split has 100 examples, fewer than --batch_size=128: "
                          "use a smaller batch or a larger split")


def test_mean_std_normalisation_and_no_augmentation_without_a_key():
  mean, std = np.array(augment.CIFAR10_MEAN), np.array(augment.CIFAR10_STD)
  images = jnp.asarray(np.stack([np.full((2, 2, 3), 0), np.full((2, 2, 3), 255)]), jnp.uint8)
  config = tiny.augment(normalization="mean_std", crop_padding=1, flip=True)
  out = np.asarray(augment.preprocess(images, config))  # eval: no key, no augmentation
  np.testing.assert_allclose(out[0], np.broadcast_to(-mean / std, (2, 2, 3)), rtol=1e-6)
  np.testing.assert_allclose(out[1], np.broadcast_to((1 - mean) / std, (2, 2, 3)), rtol=1e-6)


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


def test_flip_mirrors_about_half_the_examples_and_changes_nothing_else():
  """Each example is its image or its mirror image, and both happen: a flip that never (or
  always) mirrors fails."""
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (200, 8, 8, 3)), jnp.uint8)
  out = np.asarray(augment.preprocess(images, tiny.augment(flip=True), jax.random.key(0),
                                      jnp.arange(200)))
  plain = np.asarray(augment.normalize(images, "reference"))
  mirrored = [np.array_equal(o, p[:, ::-1]) for o, p in zip(out, plain)]
  unchanged = [np.array_equal(o, p) for o, p in zip(out, plain)]
  assert all(m != u for m, u in zip(mirrored, unchanged))  # exactly one of the two
  assert 70 <= sum(mirrored) <= 130  # a fair coin: 100 +- 4.2 standard deviations


def test_crops_are_every_window_of_the_reflect_padded_image_equally_often():
  images = jnp.asarray(np.arange(6 * 6 * 3).reshape(1, 6, 6, 3) % 256, jnp.uint8)
  images = jnp.repeat(images, 2500, axis=0)
  out = np.asarray(augment.preprocess(images, tiny.augment(crop_padding=2), jax.random.key(0),
                                      jnp.arange(2500)))
  padded = np.pad(np.asarray(augment.normalize(images[:1], "reference"))[0],
                  ((2, 2), (2, 2), (0, 0)), mode="reflect")
  windows = {(dy, dx): padded[dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)}
  counts = dict.fromkeys(windows, 0)
  for crop in out:
    [where] = [at for at, window in windows.items() if np.array_equal(crop, window)]
    counts[where] += 1
  assert all(70 <= n <= 130 for n in counts.values()), counts  # 100 each: 25 equal chances


@pytest.mark.parametrize("spec, bounds", [
    ("train", (0, 50)), ("train[0:10]", (0, 10)), ("train[:10]", (0, 10)),
    ("train[45:]", (45, 50)), ("train[-5:]", (45, 50)), ("train[-80:3]", (0, 3)),
    ("train[90%:]", (45, 50)), ("train[:10%]", (0, 5)), ("train[2:99]", (2, 50))])
def test_split_slices_read_like_tfds(spec, bounds):
  assert data.slice_bounds(spec, 50) == bounds
  assert data.slice_bounds("train[ 1 : 3 ]", 50) == (1, 3)
  assert data.slice_bounds("train[:33%]", 1000) == (0, 330)
  with pytest.raises(data.DataError) as e:
    data.slice_bounds("train[10:10]", 50)
  assert str(e.value) == "split 'train[10:10]' selects no examples of the 50 available"
  with pytest.raises(data.DataError) as e:
    data.slice_bounds("train[:half]", 50)
  assert str(e.value) == ("split 'train[:half]' is not valid: use NAME or NAME[start:stop] with "
                          "integers or percentages, e.g. train[:45000] or train[90%:]")


def test_a_source_slices_the_split_it_is_asked_for():
  source = data.SyntheticSource(100, 8)
  np.testing.assert_array_equal(source.load("train[10:20]").labels,
                                source.load("train").labels[10:20])
  assert len(source.load("train")) == 100 and len(source.load("test")) == 20


def test_a_source_without_the_split_names_the_ones_it_has():
  with pytest.raises(data.DataError) as e:
    data.SyntheticSource(8, 8).load("validation")
  assert str(e.value) == "synthetic data has no split 'validation': it has ['train', 'test']"
