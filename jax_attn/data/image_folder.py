"""``--image_folder``: a class-per-folder tree of PNG/JPEG files, e.g. CIFAR-10 as JPEGs.

The source that needs neither network nor TensorFlow; large images are decoded in threads.
"""
from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jax_attn.data.splits import ArraySplit, Source, slice_bounds
from jax_attn.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# What PIL raises for a file it cannot read as an image.
_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def decode(path: Path, image_size: int | None) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image.load()
      image = image.convert("RGB")
      if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
      return np.asarray(image, dtype=np.uint8)
  except _DECODE_ERRORS as e:
    raise DataError(f"cannot decode image {path}: {e}; remove or replace the file") from None


# Images up to this many pixels decode in the calling thread (see ``_decode_all``).
SERIAL_DECODE_MAX_PIXELS = 64 * 64


def _decode_all(paths: list[Path], image_size: int | None) -> list[np.ndarray]:
  """Decodes ``paths`` in order: small images in this thread, large ones in threads.

  A 32x32 JPEG spends most of its ~0.1 ms in PIL's Python code, which holds the GIL, so
  threads only contend: CIFAR-10's 50,000 JPEGs took 17-18 s in 4 threads and 9-12 s in one
  on 2 cores. A large image spends its time in the C decoder, which releases the GIL.
  """
  if not paths:
    return []
  try:
    with Image.open(paths[0]) as first:
      pixels = first.size[0] * first.size[1]
  except _DECODE_ERRORS:
    pixels = 0  # _decode reports the file
  if pixels <= SERIAL_DECODE_MAX_PIXELS:
    return [decode(path, image_size) for path in paths]
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    return list(pool.map(lambda path: decode(path, image_size), paths, chunksize=64))


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

  @classmethod
  def from_config(cls, config: Any) -> "ImageFolderSource":
    return cls(config.data.image_folder, config.image_size)

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
    images = _decode_all([path for path, _ in files], self.image_size)
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
      odd = next(f for (f, _), im in zip(files, images) if im.shape != images[0].shape)
      raise DataError(f"image {odd} is not {images[0].shape[1]}x{images[0].shape[0]} like the "
                      "others: pass --image_size=N to resize every image to NxN")
    labels = np.array([label for _, label in files], dtype=np.int32)
    return ArraySplit(np.stack(images), labels, classes)
