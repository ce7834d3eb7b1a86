"""Model registry: one place where the CLI, recipes and tests get their models."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_attn.sa_cnn import AIRBENCH_TRUNK, SACNN
from jax_attn.vit import ViT

MODEL_CLASSES: dict[str, type[nn.Module]] = {"sa_cnn": SACNN, "vit": ViT}

# Hyper-parameters of each named preset; the module defaults are the 'seed' ones.
PRESETS: dict[str, dict[str, Mapping[str, Any]]] = {
    "sa_cnn": {
        "seed": {},
        # Small enough for unit tests and CI on a CPU (8x8 or 16x16 images).
        "tiny": {"widths": (8, 16), "attention_stages": (0, 1)},
        # 3 stages of 2x [conv-BN-ReLU] + max-pool; SAGAN attention at 16x16 and 8x8.
        "tuned": {"widths": (40, 80, 160), "convs_per_stage": 2, "pool_stages": (0, 1, 2),
                  "attention_stages": (0, 1), "norm": "batch", "head": "gap_dense",
                  "attention_scale": "inv_sqrt_dim", "init_style": "flax"},
        # airbench-style (whitened 2x2 stem -> 31 px; per stage conv, pool, conv; GELU, BN
        # without scale, dirac init; max-pool + linear/9 head), SAGAN attention at 15x15 (64
        # channels) and 7x7 (128): 541,674 parameters with the frozen whitening filters.
        "tuned_v2": {**AIRBENCH_TRUNK, "widths": (64, 128, 112), "convs_per_stage": 2,
                     "pool_stages": (0, 1, 2), "attention_stages": (0, 1),
                     "head": "max_linear", "head_scale": 1 / 9, "attention_scale": "inv_sqrt_dim"},
    },
    "vit": {
        "seed": {},
        "tiny": {"patch_size": 4, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32, "depth": 1},
        # Patch 4 (64 tokens + class), pre-norm, 1/sqrt(d), small token init, 4 blocks.
        "tuned": {"patch_size": 4, "hidden_dim": 128, "num_heads": 4, "mlp_dim": 256, "depth": 4,
                  "dropout_rate": 0.0, "attention_scale": "inv_sqrt_dim", "norm_position": "pre",
                  "token_init_std": 0.02, "init_style": "flax"},
        # Convolutional tokens (3x3 conv 64 -> pool -> 3x3 conv 128 -> pool: 8x8 tokens + class),
        # 4 pre-norm blocks of width 128 with a 128-wide MLP (~ CCT-4/3x2, with a class token).
        "tuned_conv": {"tokenizer": "conv", "stem_widths": (64,), "hidden_dim": 128,
                       "num_heads": 4, "mlp_dim": 128, "depth": 4, "dropout_rate": 0.0,
                       "attention_scale": "inv_sqrt_dim", "norm_position": "pre",
                       "token_init_std": 0.02, "init_style": "flax"},
    },
}


def model_config(name: str, preset: str = "seed", **overrides: Any) -> dict[str, Any]:
  """The resolved keyword arguments of a preset, with ``overrides`` applied."""
  if name not in MODEL_CLASSES:
    raise ValueError(f"unknown model {name!r}: choose one of {sorted(MODEL_CLASSES)}")
  if preset not in PRESETS[name]:
    raise ValueError(
        f"unknown preset {preset!r} for model {name!r}: choose one of {sorted(PRESETS[name])}")
  config = dict(PRESETS[name][preset])
  config.update(overrides)
  return config


# Module fields that are run settings (config.num_classes, .dtype, .attention_impl), not
# architecture hyper-parameters (config.model).
RUN_FIELDS = ("num_classes", "dtype", "attention_impl", "batch_axis", "parent", "name")


def hyperparameters(name: str, preset: str = "seed", **overrides: Any) -> dict[str, Any]:
  """Every architecture hyper-parameter of ``name``: the module's defaults, then the preset's
  values, then ``overrides`` (what a recipe stores as ``config.model``)."""
  config = model_config(name, preset, **overrides)
  fields = [f for f in dataclasses.fields(MODEL_CLASSES[name]) if f.name not in RUN_FIELDS]
  return {f.name: config.get(f.name, f.default) for f in fields}


def get_model(name: str, preset: str = "seed", **overrides: Any) -> nn.Module:
  """Builds a model, e.g. ``get_model('sa_cnn', preset='seed', num_classes=10)``."""
  config = model_config(name, preset, **overrides)
  return MODEL_CLASSES[name](**config)


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, int, int]
                   ) -> dict[str, Any]:
  """Initialises all variable collections from a dummy batch of one image."""
  variables = model.init({"params": rng}, jnp.zeros((1,) + tuple(image_shape)), train=False)
  return {k: v for k, v in variables.items() if k != "intermediates"}


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (what the reference counts)."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def param_shapes(model: nn.Module, image_shape: tuple[int, int, int]) -> Any:
  """Parameter shapes without allocating anything (``jax.eval_shape``)."""
  shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))
  return shapes["params"]
