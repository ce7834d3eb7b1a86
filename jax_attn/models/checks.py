"""The models' checks of their own fields: a bad value is a ``ValueError`` that names it."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Sequence

import flax.linen as nn


def choices(module_class: type[nn.Module]) -> dict[str, tuple[Any, ...]]:
  """``{field: allowed values}`` of every field annotated ``Literal[...]``: a choice is
  declared once, by its annotation, and checked here."""
  hints = typing.get_type_hints(module_class)
  return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(module_class)
          if typing.get_origin(hints.get(f.name)) is typing.Literal}


def check_choices(module: nn.Module) -> None:
  for name, allowed in choices(type(module)).items():
    if getattr(module, name) not in allowed:
      raise ValueError(f"unknown {name} {getattr(module, name)!r}: use one of "
                       f"{', '.join(map(repr, allowed))}")


def check_positive(module: nn.Module, *names: str) -> None:
  for name in names:
    if getattr(module, name) <= 0:
      raise ValueError(f"{type(module).__name__} {name} must be positive, got "
                       f"{getattr(module, name)}")


def check_stage_counts(counts: Sequence[int], stages: int, field: str, per: str) -> None:
  """Convolutions per stage: one positive count for each of the ``stages`` (``per``)."""
  if len(tuple(counts)) != stages or min(counts, default=0) < 1:
    raise ValueError(f"{field} {tuple(counts)} must hold one positive count per stage of "
                     f"{per} ({stages})")
