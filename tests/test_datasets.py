"""Data sources on fixtures the tests write themselves, plus the real JPEG tree when present."""
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jax_attn import configs, data
from jax_attn.data import DataError
from jax_attn.data import tfds as tfds_source

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def _data(num_classes=10, **values):
  """A run's config with these data settings (the schema's defaults otherwise)."""
  config = configs.base("vit")
  config.num_classes = num_classes
  config.data.update(values)
  return config


def _write_image(path, size=8, mode="RGB", value=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new(mode, (size, size), color=value if mode == "L" else (value,) * len(mode)).save(path)


@pytest.fixture
def folder(tmp_path):
  """train: 3 classes x 4 images (PNG and JPEG); test: 3 classes x 1 image."""
  for split, count in (("train", 4), ("test", 1)):
    for label, cls in enumerate(("cat", "ant", "bee")):
      for i in range(count):
        suffix = ".png" if i % 2 else ".jpg"
        _write_image(tmp_path / split / cls / f"{i:04d}{suffix}", value=10 * label + i)
  return tmp_path


def test_image_folder_labels_order_and_splits(folder):
  source = data.ImageFolderSource(str(folder))
  assert source.splits() == ("test", "train")
  train = source.load("train")
  assert train.class_names == ("ant", "bee", "cat")  # sorted names -> label ids
  assert train.images.shape == (12, 8, 8, 3) and train.images.dtype == np.uint8
  np.testing.assert_array_equal(train.labels[:6], [0, 1, 2, 0, 1, 2])  # round-robin
  held_out = source.load("train[75%:]")
  assert sorted(held_out.labels) == [0, 1, 2]  # a tail slice is class-balanced
  assert len(source.load("train[:50%]")) == 6 and len(source.load("train[-3:]")) == 3


def test_image_folder_converts_grayscale_and_rgba(folder):
  _write_image(folder / "train" / "ant" / "9998.png", mode="L", value=7)
  _write_image(folder / "train" / "ant" / "9999.png", mode="RGBA", value=9)
  train = data.ImageFolderSource(str(folder)).load("train")
  assert train.images.shape == (14, 8, 8, 3)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "train" / "bee" / "0001.png").write_bytes(b"\x89PNG broken"),
     "cannot decode image .*0001.png"),
    (lambda root: _write_image(root / "train" / "bee" / "0005.png", size=12),
     "is not 8x8 like the others: pass --image_size"),
    (lambda root: (root / "train" / "dog").mkdir(), "class folder .*dog has no"),
    (lambda root: (root / "empty").mkdir(), "has no class folders"),
])
def test_image_folder_bad_input(folder, damage, message):
  damage(folder)
  split = "empty" if (folder / "empty").exists() else "train"
  with pytest.raises(DataError, match=message):
    data.ImageFolderSource(str(folder)).load(split)


def test_image_folder_resizes_only_when_asked(folder):
  _write_image(folder / "train" / "bee" / "0005.png", size=12)
  train = data.ImageFolderSource(str(folder), image_size=16).load("train")
  assert train.images.shape == (13, 16, 16, 3)


@pytest.mark.parametrize("size", [8, 80])  # decoded in this thread / in threads
def test_image_folder_decodes_in_file_order_at_any_size(tmp_path, size):
  from jax_attn.data import image_folder
  assert (size * size > image_folder.SERIAL_DECODE_MAX_PIXELS) == (size == 80)
  rng = np.random.default_rng(size)
  # Round-robin over the sorted classes: ant/0000, bee/0001, ant/0002, ... is file order.
  paths = [tmp_path / "train" / ("ant", "bee")[i % 2] / f"{i:04d}.png" for i in range(40)]
  for path in paths:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
  train = data.ImageFolderSource(str(tmp_path)).load("train")
  assert train.images.shape == (40, size, size, 3)
  for k in (0, 1, 38, 39):
    np.testing.assert_array_equal(train.images[k], np.asarray(Image.open(paths[k])))


def test_image_folder_names_a_broken_first_file(folder):
  (folder / "train" / "ant" / "0000.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(DataError, match="cannot decode image .*ant/0000.jpg"):
    data.ImageFolderSource(str(folder)).load("train")


def _cifar_batch(n, offset):
  rng = np.random.default_rng(offset)
  return {b"batch_label": b"x", b"labels": [int(x) for x in rng.integers(0, 10, n)],
          b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
          b"filenames": [b"f%d.png" % i for i in range(n)]}


def _write_archive(root, as_tar, batch=None):
  folder = root / "cifar-10-batches-py"
  folder.mkdir(parents=True)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for i, name in enumerate(names):
    (folder / name).write_bytes(pickle.dumps(batch or _cifar_batch(3, i), protocol=2))
  labels = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                 "horse", "ship", "truck")]
  (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": labels}, protocol=2))
  if not as_tar:
    return folder
  path = root / "cifar-10-python.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-py")
  return path


@pytest.mark.parametrize("as_tar", [True, False])
def test_cifar_archive(tmp_path, as_tar):
  source = data.CifarArchiveSource(str(_write_archive(tmp_path, as_tar)))
  train, test = source.load("train"), source.load("test")
  assert train.images.shape == (15, 32, 32, 3) and len(test) == 3
  assert train.class_names[0] == "airplane" and len(train.class_names) == 10
  raw = _cifar_batch(3, 0)
  np.testing.assert_array_equal(train.images[0, :, :, 0].ravel(), raw[b"data"][0, :1024])  # red plane
  np.testing.assert_array_equal(train.images[0, 0, 1], raw[b"data"][0, [1, 1025, 2049]])
  np.testing.assert_array_equal(train.labels[:3], raw[b"labels"])


def test_archive_that_is_not_cifar(tmp_path):
  path = _write_archive(tmp_path, as_tar=False, batch={b"data": np.zeros((2, 10), np.uint8)})
  with pytest.raises(DataError, match="lacks CIFAR-10 b'data'"):
    data.CifarArchiveSource(str(path)).load("train")


def test_archive_refuses_arbitrary_pickles(tmp_path):
  path = _write_archive(tmp_path, as_tar=False)

  class Evil:
    def __reduce__(self):
      return (print, ("owned",))
  (path / "data_batch_1").write_bytes(pickle.dumps(Evil(), protocol=2))
  with pytest.raises(DataError, match="refusing to load .*print"):
    data.CifarArchiveSource(str(path)).load("train")


def test_synthetic_is_deterministic_and_sized():
  a = data.SyntheticSource(100, 16).load("train")
  b = data.SyntheticSource(100, 16).load("train")
  np.testing.assert_array_equal(a.images, b.images)
  assert a.images.shape == (100, 16, 16, 3) and len(data.SyntheticSource(100).load("test")) == 20
  np.testing.assert_array_equal(data.SyntheticSource(100, 16).load("train[10:20]").images,
                                a.images[10:20])


@pytest.mark.parametrize("spec, bounds", [
    ("train", (0, 50000)), ("train[:45000]", (0, 45000)), ("train[45000:]", (45000, 50000)),
    ("train[90%:]", (45000, 50000)), ("train[-10:]", (49990, 50000)), ("test[1:3]", (1, 3))])
def test_split_slicing(spec, bounds):
  assert data.slice_bounds(spec, 50000) == bounds


@pytest.mark.parametrize("spec, message", [
    ("train[::2]", "is not valid"), ("train[a:b]", "is not valid"), ("train[5:5]", "selects no")])
def test_bad_split_strings(spec, message):
  with pytest.raises(DataError, match=message):
    data.slice_bounds(spec, 100)


def test_defaults_hold_out_a_tenth_without_test_split(folder):
  import shutil
  shutil.rmtree(folder / "test")
  logs = []
  train, evaluation, train_spec, eval_spec = data.load_train_eval(
      _data(3, image_folder=str(folder)), logs.append)
  assert (train_spec, eval_spec) == ("train[:90%]", "train[90%:]")
  assert len(train) + len(evaluation) == 12 and "no 'test' split" in logs[0]


def test_label_count_must_match_model(folder):
  with pytest.raises(DataError, match="has 3 classes but the model has num_classes=10"):
    data.load_train_eval(_data(10, image_folder=str(folder)))


def test_more_than_one_source():
  with pytest.raises(DataError, match="choose one data source"):
    data.make_source(_data(synthetic=True, dataset="cifar10"))


def test_registry_picks_the_named_source(folder):
  assert isinstance(data.make_source(_data(image_folder=str(folder))), data.ImageFolderSource)
  assert isinstance(data.make_source(_data(synthetic=True)), data.SyntheticSource)
  source = data.make_source(_data())  # nothing named: tfds cifar10, built without importing TF
  assert isinstance(source, data.TfdsSource) and source.name == "cifar10"
  with pytest.raises(DataError, match=r"^choose one data source, not --dataset and --synthetic$"):
    data.make_source(_data(synthetic=True, dataset="cifar10"))


def test_tfds_source_with_mock_data(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds_source, "_can_resolve", lambda hosts: True)  # mock_data needs no network
  with tfds.testing.mock_data(num_examples=20):
    source = data.TfdsSource("cifar10")
    assert "test" in source.splits()
    train = source.load("train")
  assert train.images.shape == (20, 32, 32, 3) and train.images.dtype == np.uint8
  assert len(train.class_names) == 10 and train.labels.max() < 10


def test_tfds_without_network_names_offline_sources(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")

  class Offline:
    def is_prepared(self):
      return True  # skip the DNS probe: download_and_prepare fails as a real download would

    def download_and_prepare(self):
      raise ConnectionError("Failed to establish a new connection\nmore detail")
  monkeypatch.setattr(tfds, "builder", lambda *a, **k: Offline())
  with pytest.raises(DataError) as info:
    data.TfdsSource("cifar10").splits()
  message = str(info.value)
  assert "\n" not in message and "--image_folder" in message and "--cifar_archive" in message


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason="../shared/data/cifar10-jpeg not present")
def test_real_cifar10_jpeg_tree():
  train = data.ImageFolderSource(str(SHARED_TRAIN)).load("train")
  assert train.images.shape == (50000, 32, 32, 3) and train.images.dtype == np.uint8
  assert len(train.class_names) == 10
  np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
  assert 60 < train.images.mean() < 180  # real photographs, not blank decodes


def test_tfds_fails_fast_without_dns(monkeypatch, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(tfds_source, "_can_resolve", lambda hosts: False)
  with pytest.raises(DataError, match="no network: cannot resolve .*--image_folder"):
    data.TfdsSource("cifar10", data_dir=str(tmp_path)).splits()


def test_cifar_archive_missing_files_are_named(tmp_path):
  folder = _write_archive(tmp_path, as_tar=False)
  (folder / "data_batch_3").unlink()
  with pytest.raises(DataError, match=r"has no split 'train': it has \['test'\] \(split 'train' "
                                      r"needs the files data_batch_3, which are not in it"):
    data.CifarArchiveSource(str(folder)).load("train")
