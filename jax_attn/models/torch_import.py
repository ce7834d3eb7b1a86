"""The notebook's PyTorch weights as the parameters of our notebook networks."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import flax
import numpy as np

from jax_attn import models

# (regex over the Flax parameter path, torch key template, layout conversion)
_SA_CNN_RULES = [
    (r"conv(\d+)/kernel", "convolution{0}.weight", "conv"),
    (r"conv(\d+)/bias", "convolution{0}.bias", "same"),
    (r"sa(\d+)/(query|key|value)/kernel", "sa{0}.{1}_convolution.weight", "conv"),
    (r"sa(\d+)/(query|key|value)/bias", "sa{0}.{1}_convolution.bias", "same"),
    (r"sa(\d+)/gamma", "sa{0}.gamma_parameter", "scalar"),
]
_BLOCK = "transformer_encoder_blocks.{0}"
_VIT_RULES = [
    (r"patch_embedding/kernel", "patch_embedding.weight", "conv"),
    (r"patch_embedding/bias", "patch_embedding.bias", "same"),
    (r"class_token", "class_token", "same"),
    (r"pos_embedding", "positional_embedding", "same"),
    (r"encoder_block(\d+)/attention/(query|key|value)/kernel",
     _BLOCK + ".self_attention.{1}.weight", "linear"),
    (r"encoder_block(\d+)/attention/(query|key|value)/bias",
     _BLOCK + ".self_attention.{1}.bias", "same"),
    (r"encoder_block(\d+)/attention/out/kernel", _BLOCK + ".self_attention.fc_out.weight", "linear"),
    (r"encoder_block(\d+)/attention/out/bias", _BLOCK + ".self_attention.fc_out.bias", "same"),
    (r"encoder_block(\d+)/mlp/dense1/kernel", _BLOCK + ".feed_forward.0.weight", "linear"),
    (r"encoder_block(\d+)/mlp/dense1/bias", _BLOCK + ".feed_forward.0.bias", "same"),
    (r"encoder_block(\d+)/mlp/dense2/kernel", _BLOCK + ".feed_forward.2.weight", "linear"),
    (r"encoder_block(\d+)/mlp/dense2/bias", _BLOCK + ".feed_forward.2.bias", "same"),
    (r"encoder_block(\d+)/(norm[12])/scale", _BLOCK + ".{1}.weight", "same"),
    (r"encoder_block(\d+)/(norm[12])/bias", _BLOCK + ".{1}.bias", "same"),
    (r"head/kernel", "fc.weight", "linear"),
    (r"head/bias", "fc.bias", "same"),
]
_RULES = {"sa_cnn": _SA_CNN_RULES, "vit": _VIT_RULES}


def _convert(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":  # torch OIHW -> flax HWIO
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
  if layout == "linear":  # torch [out, in] -> flax [in, out]
    return array.T if array.ndim == 2 else array
  if layout == "scalar":
    return array.reshape(()) if array.size == 1 else array
  return array


def _torch_key(model: str, path: str) -> tuple[str, str]:
  for pattern, template, layout in _RULES[model]:
    match = re.fullmatch(pattern, path)
    if match:
      return template.format(*match.groups()), layout
  raise AssertionError(f"no torch name for Flax parameter {path}")  # a bug, not bad input


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def _vit_image_size(state: Mapping[str, np.ndarray]) -> int:
  try:
    patch = state["patch_embedding.weight"].shape[-1]
    tokens = state["positional_embedding"].shape[1]
  except (KeyError, IndexError) as e:
    raise ValueError(f"ViT state_dict lacks a well-formed {e}: cannot infer the image size") from e
  grid = math.isqrt(tokens - 1)
  if grid * grid != tokens - 1:
    raise ValueError(f"positional_embedding has {tokens} tokens: not 1 + a square number of patches")
  return grid * patch


def from_torch(state_dict: Mapping[str, Any], model: str, num_classes: int = 10
               ) -> dict[str, Any]:
  """Converts a notebook ``state_dict`` into the Flax ``params`` of its network (``model``'s
  defaults, ``models.get_model(model)``).

  Conv weights go OIHW -> HWIO, Linear weights are transposed, the SAGAN gamma
  becomes a scalar. The ViT image size is inferred from the position embedding.
  Raises ValueError listing missing keys, unexpected keys and shape mismatches.
  """
  if model not in _RULES:
    raise ValueError(f"unknown model {model!r}: choose one of {sorted(_RULES)}")
  state = {k: _to_numpy(v) for k, v in state_dict.items()}
  image_size = _vit_image_size(state) if model == "vit" else 32
  module = models.get_model(model, num_classes=num_classes)
  expected = flax.traverse_util.flatten_dict(
      models.param_shapes(module, (image_size, image_size, 3)), sep="/")
  converted, missing, mismatched, used = {}, [], [], set()
  for path, shape in expected.items():
    key, layout = _torch_key(model, path)
    if key not in state:
      missing.append(key)
      continue
    used.add(key)
    value = _convert(state[key], layout)
    if value.shape != tuple(shape.shape):
      mismatched.append(f"{key}: {state[key].shape} cannot become {path} {tuple(shape.shape)}")
    converted[path] = value
  unexpected = sorted(set(state) - used)
  problems = []
  if missing:
    problems.append(f"missing keys {sorted(missing)}")
  if unexpected:
    problems.append(f"unexpected keys {unexpected}")
  if mismatched:
    problems.append(f"wrong shapes {mismatched}")
  if problems:
    raise ValueError(f"cannot import {model} state_dict: " + "; ".join(problems))
  return flax.traverse_util.unflatten_dict(converted, sep="/")
