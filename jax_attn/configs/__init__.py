"""Recipe files: ``get_config(recipe)`` returns a complete ``ml_collections.ConfigDict``.

``python -m jax_attn.main --config=jax_attn/configs/vit.py:tuned --config.model.depth=6``;
``--model=vit --recipe=tuned`` is the shorthand for the packaged files. ``default.py`` holds
the schema every recipe starts from.
"""
from __future__ import annotations

import re
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
MODEL_FILES = ("sa_cnn", "vit")


def packaged_path(model: str, recipe: str) -> str:
  """``--config`` value of a packaged recipe, e.g. ``.../configs/vit.py:tuned``."""
  return f"{CONFIG_DIR / (model + '.py')}:{recipe}"


def with_packaged_config(argv: list[str]) -> list[str]:
  """Inserts ``--config=<package>/configs/MODEL.py:RECIPE`` unless ``--config`` is given.

  Done before flag parsing, because ``--config.PATH`` overrides need a ``--config`` before them.
  """
  if any(re.match(r"^--?config(=|$)", arg) for arg in argv[1:]):
    return argv
  values = {"model": "sa_cnn", "recipe": "seed"}
  for i, arg in enumerate(argv[1:], 1):
    for name in values:
      if arg.startswith(f"--{name}="):
        values[name] = arg.split("=", 1)[1]
      elif arg == f"--{name}" and i + 1 < len(argv):
        values[name] = argv[i + 1]
  if values["model"] not in MODEL_FILES:
    return argv  # validate() names the valid families
  return [argv[0], f"--config={packaged_path(values['model'], values['recipe'])}"] + argv[1:]
