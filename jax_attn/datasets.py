"""Data sources that load a CIFAR-style split into memory as uint8 arrays.

Sources: tfds (``--dataset``), a class-per-folder image tree (``--image_folder``),
the official pickled archive (``--cifar_archive``) and synthetic data
(``--synthetic``). Only the tfds source imports TensorFlow, and only when used.
Split strings use tfds slicing syntax: ``train``, ``train[:45000]``, ``train[90%:]``.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import pickle
import re
import socket
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from jax_attn.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SPLIT = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split in memory: uint8 images ``[N, H, W, 3]`` and int32 labels ``[N]``."""
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)


def parse_split(spec: str) -> tuple[str, str | None, str | None]:
  """``'train[:90%]'`` -> ``('train', None, '90%')``; DataError when it is not tfds syntax."""
  match = _SPLIT.match(spec.replace(" ", ""))
  if not match:
    raise DataError(f"split {spec!r} is not valid: use NAME or NAME[start:stop] "
                    "with integers or percentages, e.g. train[:45000] or train[90%:]")
  return match["name"], match["start"], match["stop"]


def _bound(text: str | None, size: int, default: int) -> int:
  if text is None:
    return default
  value = round(size * int(text[:-1]) / 100) if text.endswith("%") else int(text)
  return max(0, min(size, value + size if value < 0 else value))


def slice_bounds(spec: str, size: int) -> tuple[int, int]:
  """The ``[start, stop)`` example range a split string selects from a split of ``size``."""
  _, start, stop = parse_split(spec)
  begin, end = _bound(start, size, 0), _bound(stop, size, size)
  if end <= begin:
    raise DataError(f"split {spec!r} selects no examples of the {size} available")
  return begin, end


class Source:
  """A named collection of splits; ``load`` returns one (sliced) split."""
  description = "data"

  def splits(self) -> tuple[str, ...]:
    raise NotImplementedError

  def load(self, spec: str) -> ArraySplit:
    name, _, _ = parse_split(spec)
    if name not in self.splits():
      raise DataError(f"{self.description} has no split {name!r}: it has {list(self.splits())}")
    return self._load(name, spec)

  def _load(self, name: str, spec: str) -> ArraySplit:
    raise NotImplementedError


# ----------------------------------------------------------------------------- image folder
def _decode(path: Path, image_size: int | None) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image.load()
      image = image.convert("RGB")
      if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
      return np.asarray(image, dtype=np.uint8)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from None


class ImageFolderSource(Source):
  """``ROOT/<split>/<class>/*.{png,jpg,jpeg}``; class names sorted give the label ids.

  Examples are ordered round-robin over classes (the i-th file of each class in
  turn), so any contiguous slice such as ``train[90%:]`` is class-balanced.
  """

  def __init__(self, root: str, image_size: int | None = None):
    self.root, self.image_size = Path(root), image_size
    self.description = f"image folder {root}"
    if not self.root.is_dir():
      raise DataError(f"--image_folder={root} does not exist or is not a directory")

  def splits(self) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir()))

  def _files(self, name: str) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    split_dir = self.root / name
    classes = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir()))
    if not classes:
      raise DataError(f"{split_dir} has no class folders: expected {split_dir}/<class>/*.png|jpg")
    per_class = []
    for label, cls in enumerate(classes):
      files = sorted(p for p in (split_dir / cls).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
      if not files:
        raise DataError(f"class folder {split_dir / cls} has no .png/.jpg/.jpeg images")
      per_class.append([(f, label) for f in files])
    longest = max(len(files) for files in per_class)
    ordered = [files[i] for i in range(longest) for files in per_class if i < len(files)]
    return ordered, classes

  def _load(self, name: str, spec: str) -> ArraySplit:
    files, classes = self._files(name)
    begin, end = slice_bounds(spec, len(files))
    files = files[begin:end]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
      images = list(pool.map(lambda item: _decode(item[0], self.image_size), files, chunksize=256))
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
      odd = next(f for (f, _), im in zip(files, images) if im.shape != images[0].shape)
      raise DataError(f"image {odd} is not {images[0].shape[1]}x{images[0].shape[0]} like the "
                      "others: pass --image_size=N to resize every image to NxN")
    labels = np.array([label for _, label in files], dtype=np.int32)
    return ArraySplit(np.stack(images), labels, classes)


# ----------------------------------------------------------------------------- CIFAR archive
class _CifarUnpickler(pickle.Unpickler):
  """Allows only what CIFAR-10 pickles hold: dicts, lists, bytes and ndarrays (+ latin-1 bytes)."""
  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


class CifarArchiveSource(Source):
  """The official ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/``."""
  _SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

  def __init__(self, path: str):
    self.path = Path(path)
    self.description = f"CIFAR archive {path}"
    if not self.path.exists():
      raise DataError(f"--cifar_archive={path} does not exist: give the official "
                      "cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ directory")
    self._members = self._read_members()

  def _read_members(self) -> dict[str, bytes]:
    wanted = {"batches.meta", *sum(self._SPLIT_FILES.values(), [])}
    try:
      if self.path.is_dir():
        return {p.name: p.read_bytes() for p in self.path.iterdir() if p.name in wanted}
      with tarfile.open(self.path) as tar:
        return {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and Path(m.name).name in wanted}
    except (tarfile.TarError, OSError) as e:
      raise DataError(f"cannot read {self.description}: {e}") from None

  def splits(self) -> tuple[str, ...]:
    return tuple(s for s, files in self._SPLIT_FILES.items() if all(f in self._members for f in files))

  def _unpickle(self, member: str) -> dict:
    try:
      content = _CifarUnpickler(io.BytesIO(self._members[member]), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means "not a CIFAR file"
      raise DataError(f"{self.description}: {member} is not a CIFAR-10 pickle ({e})") from None
    if not isinstance(content, dict):
      raise DataError(f"{self.description}: {member} is not a CIFAR-10 batch dict")
    return content

  def _load(self, name: str, spec: str) -> ArraySplit:
    images, labels = [], []
    for member in self._SPLIT_FILES[name]:
      batch = self._unpickle(member)
      data, batch_labels = batch.get(b"data"), batch.get(b"labels")
      if (not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072
          or batch_labels is None or len(batch_labels) != len(data)):
        raise DataError(f"{self.description}: {member} lacks CIFAR-10 b'data' [N, 3072] uint8 "
                        "and b'labels' [N]: is this the python version of CIFAR-10?")
      images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels.append(np.asarray(batch_labels, dtype=np.int32))
    meta = self._unpickle("batches.meta") if "batches.meta" in self._members else {}
    names = tuple(n.decode() for n in meta.get(b"label_names", [])) or tuple(
        str(i) for i in range(int(max(map(np.max, labels))) + 1))
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    begin, end = slice_bounds(spec, len(all_labels))
    return ArraySplit(np.ascontiguousarray(all_images[begin:end]), all_labels[begin:end], names)


# ----------------------------------------------------------------------------- synthetic
class SyntheticSource(Source):
  """Deterministic, learnable CIFAR-shaped data: a fixed random template per class plus noise.

  ``train`` has ``size`` examples, ``test`` a fifth of that; identical on every call.
  """
  description = "synthetic data"

  def __init__(self, size: int = 1024, image_size: int = 32, num_classes: int = 10):
    if size < 1:
      raise DataError(f"--synthetic_size={size} must be positive")
    self.size, self.image_size, self.num_classes = size, image_size, num_classes

  def splits(self) -> tuple[str, ...]:
    return ("train", "test")

  def _load(self, name: str, spec: str) -> ArraySplit:
    shape = (self.image_size, self.image_size, 3)
    templates = np.random.default_rng(0).uniform(0, 255, (self.num_classes,) + shape)
    total = self.size if name == "train" else max(1, self.size // 5)
    begin, end = slice_bounds(spec, total)
    rng = np.random.default_rng([1 if name == "train" else 2, total])
    labels = rng.integers(0, self.num_classes, total).astype(np.int32)[begin:end]
    noise = rng.uniform(0, 255, (total,) + shape)[begin:end]
    images = (0.5 * templates[labels] + 0.5 * noise).astype(np.uint8)
    return ArraySplit(images, labels, tuple(f"class_{i}" for i in range(self.num_classes)))


# ----------------------------------------------------------------------------- tfds
# tfds downloads prepared data from GCS, else from the dataset's own site (CIFAR-10's is below).
_TFDS_HOSTS = ("storage.googleapis.com", "www.cs.toronto.edu")


def _can_resolve(hosts: tuple[str, ...]) -> bool:
  """A fast offline check: without DNS, tfds would spend minutes retrying before failing."""
  for host in hosts:
    try:
      socket.getaddrinfo(host, 443)
      return True
    except OSError:
      continue
  return False


class TfdsSource(Source):
  """A tfds dataset (``cifar10`` by default), prepared on first use; TF imported lazily."""

  def __init__(self, name: str = "cifar10", data_dir: str | None = None):
    self.name, self.data_dir = name, data_dir
    self.description = f"tfds dataset {name}"
    self._builder = None

  def _tfds_builder(self):
    if self._builder is None:
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      except ImportError:
        raise DataError("--dataset needs tensorflow-datasets and tensorflow-cpu (pip install "
                        "tensorflow-datasets tensorflow-cpu), or use --image_folder, "
                        "--cifar_archive or --synthetic") from None
      tf.config.set_visible_devices([], "GPU")  # TF must not take accelerator memory
      try:
        builder = tfds.builder(self.name, data_dir=self.data_dir)
        if not builder.is_prepared() and not _can_resolve(_TFDS_HOSTS):
          raise ConnectionError("no network: cannot resolve " + " or ".join(_TFDS_HOSTS))
        builder.download_and_prepare()
      except Exception as e:  # network, permissions, unknown name: all end the same way
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"could not prepare tfds dataset {self.name!r} ({first_line}); offline, "
                        "use --image_folder=DIR, --cifar_archive=cifar-10-python.tar.gz or "
                        "--synthetic instead") from None
      self._builder = builder
    return self._builder

  def splits(self) -> tuple[str, ...]:
    # Builders without metadata (e.g. under tfds.testing.mock_data) list no splits.
    return tuple(self._tfds_builder().info.splits.keys()) or ("train", "test")

  def _load(self, name: str, spec: str) -> ArraySplit:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = self._tfds_builder()
    dataset = builder.as_dataset(split=spec, as_supervised=True).batch(8192)
    chunks = list(tfds.as_numpy(dataset))
    if not chunks:
      raise DataError(f"split {spec!r} of {self.description} selects no examples")
    images = np.concatenate([c[0] for c in chunks]).astype(np.uint8)
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int32)
    return ArraySplit(images, labels, tuple(builder.info.features["label"].names))


# ----------------------------------------------------------------------------- choosing
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which source and splits to read; exactly one of the four sources may be named."""
  dataset: str | None = None          # tfds name; None = not named (cifar10 when nothing else is)
  data_dir: str | None = None
  image_folder: str | None = None
  cifar_archive: str | None = None
  synthetic: bool = False
  synthetic_size: int = 1024
  image_size: int | None = None       # resize image-folder images to this size
  train_split: str | None = None      # None: 'train' (or 'train[:90%]' without a test split)
  eval_split: str | None = None       # None: 'test' (or 'train[90%:]' without a test split)


def make_source(config: DataConfig, num_classes: int = 10) -> Source:
  named = [f"--{flag}" for flag, given in (
      ("dataset", config.dataset), ("image_folder", config.image_folder),
      ("cifar_archive", config.cifar_archive), ("synthetic", config.synthetic)) if given]
  if len(named) > 1:
    raise DataError(f"choose one data source, not {' and '.join(named)}")
  if config.image_folder:
    return ImageFolderSource(config.image_folder, config.image_size)
  if config.cifar_archive:
    return CifarArchiveSource(config.cifar_archive)
  if config.synthetic:
    return SyntheticSource(config.synthetic_size, config.image_size or 32, num_classes)
  return TfdsSource(config.dataset or "cifar10", config.data_dir)


def default_splits(source: Source) -> tuple[str, str, str | None]:
  """(train, eval, note): a held-out 10 % of train when the source has no test split."""
  if "test" in source.splits():
    return "train", "test", None
  return "train[:90%]", "train[90%:]", (
      f"{source.description} has no 'test' split: training on train[:90%] and evaluating "
      "on the held-out train[90%:] (train[:45000] / train[45000:] for CIFAR-10)")


def load_train_eval(config: DataConfig, num_classes: int,
                    log: Callable[[str], None] = print) -> tuple[ArraySplit, ArraySplit, str, str]:
  """Loads the train and eval splits; checks they agree with each other and the model."""
  source = make_source(config, num_classes)
  train_default, eval_default, note = default_splits(source)
  train_spec, eval_spec = config.train_split or train_default, config.eval_split or eval_default
  if note and not (config.train_split and config.eval_split):
    log(note)
  train, evaluation = source.load(train_spec), source.load(eval_spec)
  if len(train.class_names) != num_classes:
    raise DataError(f"{source.description} has {len(train.class_names)} classes but the model "
                    f"has num_classes={num_classes}: pass --num_classes={len(train.class_names)}")
  if train.class_names != evaluation.class_names:
    raise DataError(f"splits {train_spec!r} and {eval_spec!r} have different classes: "
                    f"{list(train.class_names)} vs {list(evaluation.class_names)}")
  if train.images.shape[1:] != evaluation.images.shape[1:]:
    raise DataError(f"train images are {train.images.shape[1:]} but eval images are "
                    f"{evaluation.images.shape[1:]}: pass --image_size=N")
  return train, evaluation, train_spec, eval_spec
