"""A tiny recipe for tests: the notebook recipes with small networks, for 8x8 or 16x16 images.

    python -m jax_attn.main --config=tests/tiny.py:vit --synthetic --image_size=8
"""
from jax_attn import configs, models

FIELDS = {"sa_cnn": {"widths": (8, 16), "convs_per_stage": (1, 1), "attention_stages": (0, 1)},
          "vit": {"patch_size": 4, "hidden_dim": 16, "num_heads": 2, "mlp_dim": 32, "depth": 1}}


def get_config(model="vit"):
  config = configs.recipe_module(model).get_config("notebook")
  config.model.update(FIELDS[model])
  config.recipe = "tiny"
  return config


def model(name, **fields):
  """The tiny network of family ``name``, ``fields`` changed."""
  return models.get_model(name, **{**FIELDS[name], **fields})


def augment(**values):
  """The ``augment`` settings at their defaults (normalisation only), ``values`` changed."""
  settings = configs.base("vit").augment
  settings.update(values)
  return settings
