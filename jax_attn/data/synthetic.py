"""``--synthetic``: generated CIFAR-shaped data for tests, benchmarks and smoke runs.

Needs no files; learnable (a fixed template per class) so a short run shows the loss fall.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from jax_attn.data.splits import ArraySplit, Source, slice_bounds
from jax_attn.errors import DataError


class SyntheticSource(Source):
  """Deterministic, learnable CIFAR-shaped data: a fixed random template per class plus noise.

  ``train`` has ``size`` examples, ``test`` a fifth of that; identical on every call.
  """
  description = "synthetic data"

  def __init__(self, size: int = 1024, image_size: int = 32, num_classes: int = 10):
    if size < 1:
      raise DataError(f"--synthetic_size={size} must be positive")
    self.size, self.image_size, self.num_classes = size, image_size, num_classes

  @classmethod
  def from_config(cls, config: Any) -> "SyntheticSource":
    return cls(config.data.synthetic_size, config.image_size or 32, config.num_classes)

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
