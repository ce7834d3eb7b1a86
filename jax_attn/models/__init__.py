"""The two model families, and what every caller does with a model: build it (from a family
name or a recipe's config), initialise it, count its parameters."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_attn.models.sa_cnn import SACNN
from jax_attn.models.vit import ViT

MODELS: dict[str, type[nn.Module]] = {"sa_cnn": SACNN, "vit": ViT}

# Module fields that a run sets (config.num_classes, config.dtype, the parallel layout), not
# hyper-parameters of the architecture (config.model).
RUN_FIELDS = ("num_classes", "dtype", "batch_axis", "parent", "name")


def hyperparameters(name: str) -> dict[str, Any]:
  """The architecture hyper-parameters of family ``name`` at their defaults (the notebook's):
  what a recipe's ``config.model`` holds."""
  return {f.name: f.default for f in dataclasses.fields(_family(name))
          if f.name not in RUN_FIELDS}


def get_model(model: Any, **fields: Any) -> nn.Module:
  """The Flax module of a family name (``get_model("vit", depth=6)``: the notebook's network
  with ``fields`` changed) or of a recipe's config (``get_model(get_recipe("vit",
  "conv_tokens"))``: its ``model``, classes and dtype; ``fields`` as run settings, e.g.
  ``batch_axis``)."""
  if isinstance(model, str):
    return _family(model)(**_tuples(fields))
  config = model
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  return _family(config.model_name)(**_tuples({
      **config.model, "num_classes": config.num_classes, "dtype": dtype, **fields}))


def _family(name: str) -> type[nn.Module]:
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
  return MODELS[name]


def _tuples(fields: dict[str, Any]) -> dict[str, Any]:
  """Lists (from JSON or a ConfigDict) as tuples: Flax modules hash their fields."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, int, int]
                   ) -> dict[str, Any]:
  """Every variable collection of ``model`` for images of ``image_shape``, from one dummy image."""
  variables = model.init({"params": rng}, jnp.zeros((1,) + tuple(image_shape)), train=False)
  return {k: v for k, v in variables.items() if k != "intermediates"}


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (what the notebook counts)."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def param_shapes(model: nn.Module, image_shape: tuple[int, int, int]) -> Any:
  """Parameter shapes without allocating anything (``jax.eval_shape``)."""
  return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))["params"]
