"""A trained run read back from its workdir: config, model and newest checkpoint, and what the
model makes of uint8 images (logits and sown attention weights).

Shared by ``jax_attn.report`` (attention maps of eval images) and ``jax_attn.predict``
(predictions on image files), so the restore code exists once. Nothing is written to the workdir.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jax_attn import augment, config as config_lib, data
from jax_attn.errors import UserError

_CHUNK = 32  # images per forward pass (SA-CNN attention weights are (HW)^2 floats per image)


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  workdir: Path
  config: Any  # the run's config.json as a ConfigDict
  model: Any  # the Flax module, float32 einsum attention (which sows its weights)
  variables: dict[str, Any]
  step: int  # the checkpoint's step

  @property
  def image_size(self) -> int:
    """The side the model was trained at (config.json files before it was recorded: 32)."""
    return self.config.image_size or self.config.data.image_size or 32


def read_config(workdir: Path) -> Any:
  """The ConfigDict of ``workdir/config.json``; UserError when there is none or it is unreadable."""
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist: pass a directory written by "
                    "python -m jax_attn.main --workdir=DIR")
  path = workdir / "config.json"
  try:
    return config_lib.from_json(json.loads(path.read_text()))
  except (OSError, ValueError, AttributeError, TypeError) as e:
    raise UserError(f"{path} is missing or unreadable ({e}): pass a directory written by "
                    "python -m jax_attn.main --workdir=DIR") from None


def load_trained(workdir: Path | str, config: Any = None) -> TrainedRun:
  """The run's model with the parameters of its newest checkpoint (``config``: the run's config
  if already read). UserError when the workdir, its config.json or a checkpoint is missing."""
  workdir = Path(workdir)
  config = read_config(workdir) if config is None else config
  directory = workdir.absolute() / "checkpoints"
  if not directory.is_dir():
    raise UserError(f"{workdir} has no checkpoints/ directory: the run saved no checkpoint yet")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = manager.latest_step()
    if step is None:
      raise UserError(f"{directory} holds no checkpoint: the run saved none yet")
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore())["state"]
    except Exception as e:  # a damaged checkpoint can fail in many ways
      raise UserError(f"the checkpoint at step {step} in {directory} cannot be restored "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
  finally:
    manager.close()
  variables = {"params": state["params"], **({"batch_stats": state["batch_stats"]}
                                             if state.get("batch_stats") else {})}
  model = config_lib.build_model(config, attention_impl="einsum", dtype=jnp.float32)
  return TrainedRun(workdir, config, model, variables, int(step))


def _layer_order(path: Any) -> tuple[Any, ...]:
  """Sort key of a sown weight's path: module names with their numbers compared as numbers
  (``encoder_block2`` before ``encoder_block10``), i.e. the order the layers run in."""
  parts = re.split(r"(\d+)", jax.tree_util.keystr(path))
  return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def apply(run: TrainedRun, images: np.ndarray, *, flip: bool = False, shift: int = 0,
          attention: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
  """Logits ``[B, classes]`` of uint8 images ``[B, S, S, 3]`` (S: ``run.image_size``), normalised
  as in training; with ``flip`` / ``shift`` the weighted mean logits of the test-time views
  (``augment.tta_views``: mirror image, moved by +-shift pixels), as the trainer evaluates. With ``attention`` also the sown attention weights
  of the plain images, one ``[B, ...]`` array per attention layer in the order they run (empty when
  the model has none)."""
  logits, layers = [], []
  for begin in range(0, len(images), _CHUNK):
    x = augment.normalize(jnp.asarray(images[begin:begin + _CHUNK]),
                          run.config.augment.normalization)
    if attention:
      out, sown = run.model.apply(run.variables, x, train=False, mutable=["intermediates"])
      flat = jax.tree_util.tree_flatten_with_path(sown.get("intermediates", {}))[0]
      layers.append([np.asarray(w) for _, w in sorted(flat, key=lambda kv: _layer_order(kv[0]))])
    else:
      out = run.model.apply(run.variables, x, train=False)
    views = augment.tta_views(flip, shift)
    if len(views) > 1:
      out = views[0][0] * out
      for weight, moved, mirrored in views[1:]:
        view = augment.translate(x, moved, moved)
        out += weight * run.model.apply(run.variables, view[:, :, ::-1] if mirrored else view,
                                        train=False)
    logits.append(np.asarray(out))
  joined = [np.concatenate(chunks) for chunks in zip(*layers)] if layers else []
  return np.concatenate(logits), joined


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")  # the label order of tfds cifar10 and the official archive


def class_names(config: Any) -> tuple[str, ...]:
  """The run's class names as far as its data source still tells them (the class folders of an image-folder run if still there, CIFAR-10's names for cifar10 / archive runs, else "class N"; config.json does not store them)."""
  settings, count = config.data, config.num_classes
  if settings.image_folder:
    split = data.parse_split(settings.train_split)[0] if settings.train_split else "train"
    folder = Path(settings.image_folder) / split
    names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir())) if folder.is_dir() else ()
    if len(names) == count:  # the source numbers the sorted class folders 0, 1, ...
      return names
  elif not settings.synthetic and count == 10 and (
      settings.cifar_archive or (settings.dataset or "cifar10") == "cifar10"):
    return CIFAR10_CLASSES
  return tuple(f"class {i}" for i in range(count))
