"""Data sources that load a CIFAR-style split into memory as uint8 arrays.

``load_train_eval`` is the one entry point. The data settings are read as attributes
(``dataset``, ``data_dir``, ``image_folder``, ``cifar_archive``, ``synthetic``,
``synthetic_size``, ``image_size``, ``train_split``, ``eval_split``), so any object that
has them works. ``SOURCES`` maps the setting that names a source to its class: a new
source is one module with a ``Source`` subclass plus one entry there.
"""
from __future__ import annotations

from typing import Any, Callable

from jax_attn.data.cifar_archive import CifarArchiveSource
from jax_attn.data.image_folder import ImageFolderSource
from jax_attn.data.splits import ArraySplit, Source, parse_split, slice_bounds
from jax_attn.data.synthetic import SyntheticSource
from jax_attn.data.tfds import TfdsSource
from jax_attn.errors import DataError

__all__ = ["ArraySplit", "CifarArchiveSource", "DataError", "DEFAULT_SOURCE", "ImageFolderSource",
           "SOURCES", "Source", "SyntheticSource", "TfdsSource", "default_splits",
           "load_train_eval", "make_source", "parse_split", "slice_bounds"]

# The setting (and --flag) that names each source, in the order errors list them.
SOURCES: dict[str, type[Source]] = {
    "dataset": TfdsSource,
    "image_folder": ImageFolderSource,
    "cifar_archive": CifarArchiveSource,
    "synthetic": SyntheticSource,
}
DEFAULT_SOURCE = "dataset"  # tfds cifar10 when no source is named


def make_source(config: Any, num_classes: int = 10) -> Source:
  """The one source the settings name (tfds cifar10 when none); DataError when several."""
  named = [field for field in SOURCES if getattr(config, field)]
  if len(named) > 1:
    raise DataError(f"choose one data source, not {' and '.join('--' + f for f in named)}")
  return SOURCES[named[0] if named else DEFAULT_SOURCE].from_config(config, num_classes)


def default_splits(source: Source) -> tuple[str, str, str | None]:
  """(train, eval, note): a held-out 10 % of train when the source has no test split."""
  if "test" in source.splits():
    return "train", "test", None
  return "train[:90%]", "train[90%:]", (
      f"{source.description} has no 'test' split: training on train[:90%] and evaluating "
      "on the held-out train[90%:] (train[:45000] / train[45000:] for CIFAR-10)")


def load_train_eval(config: Any, num_classes: int,
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
