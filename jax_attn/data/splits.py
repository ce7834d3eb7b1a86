"""What every data source shares: the split syntax, the in-memory split and the Source base.

Split strings use tfds slicing syntax (``train``, ``train[:45000]``, ``train[90%:]``) for
every source, so a split means the same examples whichever source reads it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from jax_attn.errors import DataError

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

  @classmethod
  def from_config(cls, config: Any) -> "Source":
    """The source a run's config (its ``data`` settings, ``image_size``, ...) describes."""
    raise NotImplementedError

  def splits(self) -> tuple[str, ...]:
    raise NotImplementedError

  def load(self, spec: str) -> ArraySplit:
    name, _, _ = parse_split(spec)
    if name not in self.splits():
      raise DataError(f"{self.description} has no split {name!r}: it has {list(self.splits())}"
                      f"{self._why_missing(name)}")
    return self._load(name, spec)

  def _why_missing(self, name: str) -> str:
    """Appended to the no-such-split error: what the source would need for ``name``."""
    return ""

  def _load(self, name: str, spec: str) -> ArraySplit:
    raise NotImplementedError
