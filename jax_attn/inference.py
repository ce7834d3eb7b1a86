"""A trained model read back from its run's workdir: its config, model and newest checkpoint,
and what it makes of uint8 images (logits, with the run's test-time views, and the attention
weights it sows). ``predict``, ``tools/report`` and the library API use it; it writes nothing.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_attn import configs, models
from jax_attn.data import augment
from jax_attn.errors import UserError
from jax_attn.train.checkpoint import Checkpointer

_CHUNK = 32  # images per forward pass (the SA-CNN's attention weights are (HW)^2 per image)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  config: ml_collections.ConfigDict  # the run's config.json
  model: Any                         # its Flax module, float32
  variables: dict[str, Any]
  step: int                          # the checkpoint's step

  @property
  def image_size(self) -> int:
    return self.config.image_size

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.config.class_names or (f"class {i}" for i in range(self.config.num_classes)))

  def logits(self, images: np.ndarray, *, flip: bool | None = None,
             shift: int | None = None) -> np.ndarray:
    """Logits ``[B, classes]`` of uint8 ``images [B, S, S, 3]`` (S: ``image_size``), normalised
    as in training, averaged over the test-time views the run evaluated with (``flip`` and
    ``shift`` override its ``eval_flip`` and ``eval_translate``)."""
    flip = self.config.eval_flip if flip is None else flip
    shift = self.config.eval_translate if shift is None else shift
    apply = jax.jit(lambda x: augment.tta_logits(
        lambda v: self.model.apply(self.variables, v), x, flip=flip, shift=shift)[0])
    return np.concatenate([np.asarray(apply(self._normalize(images[i:i + _CHUNK])))
                           for i in range(0, len(images), _CHUNK)])

  def attention(self, images: np.ndarray) -> list[np.ndarray]:
    """The attention weights ``[B, heads, queries, keys]`` of each attention layer, in the order
    the layers run, for the plain images (empty when the model has none)."""
    def sown(x):
      _, state = self.model.apply(self.variables, x, mutable=["intermediates"])
      flat = jax.tree_util.tree_flatten_with_path(state.get("intermediates", {}))[0]
      return [w for _, w in sorted(flat, key=lambda kv: _layer_order(kv[0]))]
    chunks = [jax.jit(sown)(self._normalize(images[i:i + _CHUNK]))
              for i in range(0, len(images), _CHUNK)]
    return [np.concatenate([np.asarray(c[layer]) for c in chunks]) for layer in range(len(chunks[0]))]

  def _normalize(self, images: np.ndarray) -> jax.Array:
    return augment.normalize(jnp.asarray(images), self.config.augment.normalization)


def _layer_order(path: Any) -> tuple[Any, ...]:
  """Sort key of a sown weight's path: module names with their numbers compared as numbers
  (``encoder_block2`` before ``encoder_block10``), i.e. the order the layers run in."""
  parts = re.split(r"(\d+)", jax.tree_util.keystr(path))
  return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def read_config(workdir: Path | str) -> ml_collections.ConfigDict:
  """The ConfigDict of ``workdir/config.json``; UserError when there is none or it is unreadable."""
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist: pass a directory written by "
                    "python -m jax_attn.main --workdir=DIR")
  path = workdir / "config.json"
  try:
    return configs.from_json(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is missing or unreadable ({e}): pass a directory written by "
                    "python -m jax_attn.main --workdir=DIR") from None


def load(workdir: Path | str) -> TrainedModel:
  """The run's model with the parameters of its newest readable checkpoint; UserError when
  the workdir, its config.json or a checkpoint is missing."""
  config = read_config(workdir)
  directory = Path(workdir) / "checkpoints"
  restored = None
  if directory.is_dir():
    restored = Checkpointer(directory, read_only=True, log=lambda _: None).restore_latest()
  if restored is None:
    raise UserError(f"{workdir} holds no checkpoint: the run saved none yet")
  step, tree = restored
  state = tree["state"]
  variables = {"params": state["params"], **({"batch_stats": state["batch_stats"]}
                                             if state.get("batch_stats") else {})}
  model = models.get_model(_with_float32(config))
  return TrainedModel(config, model, jax.device_get(variables), int(step))


def _with_float32(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  config.dtype = "float32"
  return config
