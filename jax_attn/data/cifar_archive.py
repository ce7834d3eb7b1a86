"""``--cifar_archive``: the official ``cifar-10-python.tar.gz`` (or its extracted folder).

Read without TensorFlow or network; the pickles go through an unpickler that admits only
what CIFAR-10 batches hold, so a hostile archive cannot run code.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from jax_attn.data.splits import ArraySplit, Source, slice_bounds
from jax_attn.errors import DataError


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

  @classmethod
  def from_config(cls, config: Any) -> "CifarArchiveSource":
    return cls(config.data.cifar_archive)

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

  def _why_missing(self, name: str) -> str:
    missing = [f for f in self._SPLIT_FILES.get(name, []) if f not in self._members]
    if not missing:
      return ""
    return (f" (split {name!r} needs the files {', '.join(missing)}, which are not in it; it "
            f"holds {', '.join(sorted(self._members)) or 'no CIFAR-10 batch file'})")

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
