"""Data: sources that load a split into memory as uint8 arrays, the batches fed to the
devices (``pipeline``) and the on-device preprocessing (``augment``).

``load_train_eval`` is the one entry point of the trainer. ``SOURCES`` maps the setting that
names a source to its class: a new source is one module with a ``Source`` subclass plus one
entry there.
"""
from __future__ import annotations

from typing import Any, Callable

from jax_attn.data.cifar_archive import CifarArchiveSource
from jax_attn.data.image_folder import ImageFolderSource
from jax_attn.data.splits import ArraySplit, Source, parse_split, slice_bounds
from jax_attn.data.synthetic import SyntheticSource
from jax_attn.data.tfds import TfdsSource
from jax_attn.errors import DataError

__all__ = ["ArraySplit", "CifarArchiveSource", "DataError", "ImageFolderSource", "SOURCES",
           "Source", "SyntheticSource", "TfdsSource", "default_splits", "load_train_eval",
           "make_source", "parse_split", "slice_bounds"]

# The data setting (and --flag) that names each source, in the order errors list them; tfds's
# cifar10 when none is named.
SOURCES: dict[str, type[Source]] = {
    "dataset": TfdsSource,
    "image_folder": ImageFolderSource,
    "cifar_archive": CifarArchiveSource,
    "synthetic": SyntheticSource,
}


def make_source(config: Any) -> Source:
  """The one source a run's config names (tfds cifar10 when none); DataError when several."""
  named = [field for field in SOURCES if config.data[field]]
  if len(named) > 1:
    raise DataError(f"choose one data source, not {' and '.join('--' + f for f in named)}")
  return SOURCES[named[0] if named else "dataset"].from_config(config)


def default_splits(source: Source) -> tuple[str, str, str | None]:
  """(train, eval, note): a held-out 10 % of train when the source has no test split."""
  if "test" in source.splits():
    return "train", "test", None
  return "train[:90%]", "train[90%:]", (
      f"{source.description} has no 'test' split: training on train[:90%] and evaluating "
      "on the held-out train[90%:] (train[:45000] / train[45000:] for CIFAR-10)")


def load_train_eval(config: Any, log: Callable[[str], None] = print
                    ) -> tuple[ArraySplit, ArraySplit, str, str]:
  """The train and eval splits a run's config names, checked against each other and the
  model: ``(train, eval, train split, eval split)``."""
  source = make_source(config)
  train_default, eval_default, note = default_splits(source)
  settings = config.data
  train_spec = settings.train_split or train_default
  eval_spec = settings.eval_split or eval_default
  if note and not (settings.train_split and settings.eval_split):
    log(note)
  train, evaluation = source.load(train_spec), source.load(eval_spec)
  if len(train.class_names) != config.num_classes:
    raise DataError(f"{source.description} has {len(train.class_names)} classes but the model "
                    f"has num_classes={config.num_classes}: pass "
                    f"--num_classes={len(train.class_names)}")
  if train.class_names != evaluation.class_names:
    raise DataError(f"splits {train_spec!r} and {eval_spec!r} have different classes: "
                    f"{list(train.class_names)} vs {list(evaluation.class_names)}")
  if train.images.shape[1:] != evaluation.images.shape[1:]:
    raise DataError(f"train images are {train.images.shape[1:]} but eval images are "
                    f"{evaluation.images.shape[1:]}: pass --image_size=N")
  if config.image_size not in (None, train.images.shape[1]):
    raise DataError(f"--image_size={config.image_size} but the images of "
                    f"{source.description} are {train.images.shape[1]}px, and only "
                    "--image_folder images are resized")
  return train, evaluation, train_spec, eval_spec
