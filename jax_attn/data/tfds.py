"""``--dataset``: a TensorFlow Datasets dataset (``cifar10`` when no source is named).

The only source that needs TensorFlow, imported on first use. A DNS probe makes an offline
machine fail in seconds with a one-line error naming the offline sources, where tfds would
spend minutes retrying.
"""
from __future__ import annotations

import socket
from typing import Any

import numpy as np

from jax_attn.data.splits import ArraySplit, Source
from jax_attn.errors import DataError

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

  @classmethod
  def from_config(cls, config: Any) -> "TfdsSource":
    return cls(config.data.dataset or "cifar10", config.data.data_dir)

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
