"""Recipes and settings: a recipe is a file whose ``get_config(arg)`` returns every setting of a
run as an ``ml_collections.ConfigDict`` (schema: ``default.py``).

The packaged recipes are ``configs/sa_cnn.py`` and ``configs/vit.py`` (``get_recipe``); a
recipe file of one's own is used with ``--config=PATH[:ARG]``. Here: the recipe lookup, the
one check of a config (``validate``) and its ``config.json`` form.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import ml_collections

from jax_attn import models
from jax_attn.configs import default
from jax_attn.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent
# Settings that change the parameters' shapes or meaning: resuming across them is refused.
ARCHITECTURE_KEYS = ("model_name", "model", "num_classes", "image_size")


def base(model_name: str) -> ml_collections.ConfigDict:
  """The schema's defaults with ``config.model`` holding every hyper-parameter of
  ``model_name`` at the module's defaults (the notebook's network)."""
  config = default.get_config()
  config.model_name = model_name
  config.model = models.hyperparameters(model_name)
  return config


def pick(recipes: Mapping[str, Callable[[], ml_collections.ConfigDict]],
         aliases: Mapping[str, str], model_name: str, name: str) -> ml_collections.ConfigDict:
  """The recipe ``name`` (or the one its alias names) of a recipe file, named in the config."""
  recipe = aliases.get(name, name)
  if recipe not in recipes:
    names = list(recipes) + [f"{a} (= {r})" for a, r in aliases.items()]
    raise UserError(f"--recipe={name} is unknown for {model_name}: use one of {', '.join(names)}")
  config = recipes[recipe]()
  config.recipe = recipe
  return config


def recipe_module(model_name: str) -> Any:
  """The packaged recipe file of a model family (``jax_attn.configs.sa_cnn``, ``...vit``)."""
  if model_name not in models.MODELS:
    raise UserError(f"--model={model_name} is unknown: use one of {', '.join(models.MODELS)}")
  return importlib.import_module(f"jax_attn.configs.{model_name}")


def packaged_path(model_name: str, recipe: str) -> str:
  """The ``--config`` value of a packaged recipe, e.g. ``.../configs/vit.py:conv_tokens``."""
  return f"{CONFIG_DIR / (model_name + '.py')}:{recipe}"


def with_packaged_config(argv: list[str]) -> list[str]:
  """Command-line ``argv`` with ``--config=<package>/configs/MODEL.py:RECIPE`` (from ``--model``
  and ``--recipe``) first, unless it names a ``--config``: ``--config.PATH`` overrides need a
  ``--config`` before them."""
  if any(re.match(r"^--?config(=|$)", arg) for arg in argv[1:]):
    return argv
  values = {"model": "sa_cnn", "recipe": "notebook"}
  for i, arg in enumerate(argv[1:], 1):
    for name in values:
      if arg.startswith(f"--{name}="):
        values[name] = arg.split("=", 1)[1]
      elif arg == f"--{name}" and i + 1 < len(argv):
        values[name] = argv[i + 1]
  if values["model"] not in models.MODELS:
    return argv  # main.build_config names the families
  return [argv[0], f"--config={packaged_path(values['model'], values['recipe'])}"] + argv[1:]


def get_recipe(model_name: str, recipe: str = "notebook", **overrides: Any
               ) -> ml_collections.ConfigDict:
  """A packaged recipe, with ``overrides`` by dotted path (``**{"model.depth": 6}``), checked."""
  config = recipe_module(model_name).get_config(recipe)
  for path, value in overrides.items():
    set_value(config, path, value)
  validate(config)
  return config


def set_value(config: ml_collections.ConfigDict, path: str, value: Any, source: str = "") -> None:
  """``config.<path> = value``; a one-line error naming ``source`` when it cannot be."""
  group, _, name = path.rpartition(".")
  try:
    parent = config[group] if group else config
    if name not in parent:
      raise KeyError(f"the config has no setting {path}")
    parent[name] = value  # a ConfigDict turns a list into its field's tuple
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    reason = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise UserError(f"{source or '--config.' + path}={value!r} cannot be set: "
                    f"{str(reason).splitlines()[0]}") from None


def validate(config: ml_collections.ConfigDict) -> None:
  """Every check of a config: the schema's types, choices and ranges, then the model's own
  checks (it is built, abstractly, at the image size once that is known)."""
  for setting in default.SETTINGS:
    value = config[setting.path]  # a ConfigDict reads dotted paths
    problem = setting.problem(value)
    if problem:
      name = setting.flag_name or f"config.{setting.path}"
      raise UserError(f"--{name}={value} {problem}")
  if config.model_name not in models.MODELS:
    raise UserError(f"--model={config.model_name} is unknown: use one of "
                    f"{', '.join(models.MODELS)}")
  known = models.hyperparameters(config.model_name)
  unknown = sorted(set(config.model) - set(known))
  if unknown:
    raise UserError(f"config.model.{unknown[0]}: {config.model_name} has no hyper-parameter "
                    f"{unknown[0]}; it has {', '.join(known)}")
  if config.image_size is not None:
    try:
      models.param_shapes(models.get_model(config), (config.image_size, config.image_size, 3))
    except (ValueError, TypeError) as e:
      raise UserError(f"the {config.model_name} settings are not valid: "
                      f"{str(e).splitlines()[0]}") from None


def describe(config: ml_collections.ConfigDict) -> str:
  """``vit/conv_tokens``, with the hyper-parameters that differ from that packaged recipe's."""
  try:
    packaged = recipe_module(config.model_name).get_config(config.recipe).model
  except UserError:
    return f"{config.model_name}/{config.recipe}"
  changed = {k: v for k, v in config.model.items() if v != packaged.get(k)}
  return f"{config.model_name}/{config.recipe}" + (
      f" ({', '.join(f'{k}={v}' for k, v in sorted(changed.items()))})" if changed else "")


def to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every setting as plain JSON types: what ``config.json`` holds."""
  return json.loads(json.dumps(config.to_dict()))


def from_json(content: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The ConfigDict of a ``config.json`` (lists back to tuples)."""
  name = content.get("model_name")
  config = base(name) if name in models.MODELS else default.get_config()
  for path, value in flatten(content).items():
    if path == "model":
      for key, field in value.items():
        set_value(config, f"model.{key}", field, f"config.json model.{key}")
    else:
      set_value(config, path, value, f"config.json {path}")
  return config


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"augment": {"flip": True}}`` -> ``{"augment.flip": True}`` (``model`` kept whole)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and f"{prefix}{key}" != "model":
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat
