"""A run's settings as an ``ml_collections.ConfigDict``: resolve, override, check, store.

The schema (every setting, default, help and flag) is ``configs/default.py``; the recipes
are ``configs/sa_cnn.py`` and ``configs/vit.py``. ``validate`` holds every check of a
config; ``from_json`` reads a workdir's ``config.json``, including ones written before the
settings moved to ConfigDicts (``model`` was then the family name and the architecture a
preset plus ``model_overrides``).
"""
from __future__ import annotations

import ast
import importlib
import json
from typing import Any, Iterable, Mapping

import ml_collections

from jax_attn import models
from jax_attn.configs import MODEL_FILES, default
from jax_attn.errors import UserError

# Settings that change the parameters' shapes or meaning: resuming across them is refused.
ARCHITECTURE_KEYS = ("model_name", "model", "num_classes", "image_size")


def get_recipe(model: str, recipe: str = "seed") -> ml_collections.ConfigDict:
  """The packaged recipe ``configs/MODEL.py:RECIPE``."""
  if model not in MODEL_FILES:
    raise UserError(f"--model={model} is unknown: use one of {', '.join(MODEL_FILES)}")
  module = importlib.import_module(f"jax_attn.configs.{model}")
  try:
    return module.get_config(recipe)
  except ValueError as e:
    raise UserError(str(e)) from None


def set_value(config: ml_collections.ConfigDict, path: str, value: Any, source: str = "") -> None:
  """``config.<path> = value`` with a one-line error naming ``source`` when the type is wrong."""
  group, _, name = path.rpartition(".")
  parent = get_value(config, group) if group else config
  try:
    parent[name] = value
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise UserError(f"{source or '--config.' + path}={value!r} cannot be set: "
                    f"{str(e).splitlines()[0]}") from None


def apply_preset(config: ml_collections.ConfigDict, preset: str) -> None:
  """Replaces ``config.model`` by the named preset's hyper-parameters (``--preset``)."""
  try:
    config.model = models.hyperparameters(config.model_name, preset)
  except ValueError as e:
    raise UserError(f"--preset={preset}: {e}") from None
  config.preset = preset


def set_model_args(config: ml_collections.ConfigDict, items: Iterable[str]) -> None:
  """``--model_arg=KEY=VALUE`` (VALUE a Python literal, else a string), e.g. ``depth=6``.

  Unlike ``--config.model.KEY`` a value may change type (``convs_per_stage=(2,2,1)``).
  """
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise UserError(f"--model_arg={item} is not KEY=VALUE, e.g. --model_arg=depth=6")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    _check_model_keys(config.model_name, [key], f"--model_arg={item}")
    with config.ignore_type():
      config.model[key] = value


def resolve(model: str, recipe: str = "seed", overrides: Mapping[str, Any] | None = None
            ) -> ml_collections.ConfigDict:
  """A packaged recipe with ``overrides`` (dotted paths, e.g. ``{"model.depth": 6}``), checked."""
  config = get_recipe(model, recipe)
  for path, value in (overrides or {}).items():
    if path == "preset":
      apply_preset(config, value)
    else:
      set_value(config, path, value)
  validate(config)
  return config


def augment_config(**values: Any) -> ml_collections.ConfigDict:
  """The ``augment`` settings at their defaults, with ``values`` (library use, tests)."""
  config = default.get_config().augment
  config.update(values)
  return config


def data_config(**values: Any) -> ml_collections.ConfigDict:
  """The ``data`` settings at their defaults, with ``values`` (library use, tests)."""
  config = default.get_config().data
  config.update(values)
  return config


def replace(config: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
  """A copy of ``config`` with top-level ``values`` set."""
  new = ml_collections.ConfigDict(config.to_dict())
  for key, value in values.items():
    set_value(new, key, value)
  return new


# ------------------------------------------------------------------ checks
def _check_model_keys(name: str, keys: Iterable[str], source: str) -> None:
  known = models.hyperparameters(name, "seed")
  unknown = sorted(set(keys) - set(known))
  if unknown:
    raise UserError(f"{source}: {name} has no hyper-parameter {', '.join(unknown)}: "
                    f"it has {', '.join(known)}")


def _check_model(config: ml_collections.ConfigDict) -> None:
  """The model builds and initialises (abstractly) at the configured image size."""
  _check_model_keys(config.model_name, config.model.keys(), "config.model")
  if config.model.get("head") == "none":
    raise UserError("the sa_cnn head 'none' returns feature maps, not class logits (it serves "
                    "the ViT's cnn tokenizer): use conv_gap, gap_dense or max_linear")
  size = config.image_size or config.data.image_size
  if size is None:
    return  # checked again once the data gives the size
  try:
    model = build_model(config)
    models.param_shapes(model, (size, size, 3))
  except (ValueError, TypeError) as e:
    raise UserError(f"the {config.model_name} settings are not valid ({_model_summary(config)}): "
                    f"{str(e).splitlines()[0]}") from None


def _model_summary(config: ml_collections.ConfigDict) -> str:
  return ", ".join(f"{k}={v}" for k, v in sorted(model_differences(config).items())) or "defaults"


def validate(config: ml_collections.ConfigDict) -> None:
  """Every check of a resolved config; the first failure is a ``UserError``."""
  for setting in default.SETTINGS:
    value = get_value(config, setting.path)
    if setting.choices and value is not None and value not in setting.choices:
      raise UserError(f"{_flag(setting)}={value} is unknown: use one of "
                      f"{', '.join(setting.choices)}")
  c = config
  checks = [
      (c.epochs >= 1, f"--epochs={c.epochs} must be at least 1"),
      (c.batch_size >= 1, f"--batch_size={c.batch_size} must be at least 1"),
      (c.learning_rate > 0, f"--learning_rate={c.learning_rate} must be positive"),
      (c.warmup_epochs >= 0, f"--warmup_epochs={c.warmup_epochs} must be >= 0"),
      (c.weight_decay >= 0, f"--weight_decay={c.weight_decay} must be >= 0"),
      (c.grad_clip_norm >= 0, f"--grad_clip_norm={c.grad_clip_norm} must be >= 0"),
      (0 <= c.momentum < 1, f"--momentum={c.momentum} must be in [0, 1)"),
      (c.muon_learning_rate > 0 and 0 <= c.muon_momentum < 1,
       "--muon_learning_rate must be positive and --muon_momentum in [0, 1)"),
      (0 <= c.label_smoothing < 1, f"--label_smoothing={c.label_smoothing} must be in [0, 1)"),
      (c.bias_lr_scale > 0, f"--bias_lr_scale={c.bias_lr_scale} must be positive"),
      (c.whiten_bias_epochs >= 0, f"--whiten_bias_epochs={c.whiten_bias_epochs} must be >= 0"),
      (c.lookahead_every_steps >= 0 and 0 <= c.lookahead_decay <= 1,
       "--lookahead_every_steps must be >= 0 and --lookahead_decay in [0, 1]"),
      (c.lr_warmup_start >= 0 and c.lr_final >= 0, "--lr_warmup_start and --lr_final must be >= 0"),
      (c.eval_translate >= 0, f"--eval_translate={c.eval_translate} must be >= 0"),
      (c.num_classes >= 1, f"--num_classes={c.num_classes} must be at least 1"),
      (c.max_steps is None or c.max_steps >= 1, f"--max_steps={c.max_steps} must be at least 1"),
      (c.eval_every_epochs >= 1, f"--eval_every_epochs={c.eval_every_epochs} must be >= 1"),
      (c.checkpoint_every_steps >= 1,
       f"--checkpoint_every_steps={c.checkpoint_every_steps} must be >= 1"),
      (c.keep_checkpoints >= 1, f"--keep_checkpoints={c.keep_checkpoints} must be at least 1"),
      (c.log_every_steps >= 1, f"--log_every_steps={c.log_every_steps} must be >= 1"),
      (c.steps_per_call >= 1, f"--steps_per_call={c.steps_per_call} must be >= 1"),
      (c.augment.crop_padding >= 0 and c.augment.cutout >= 0,
       "--augment_crop_padding and --augment_cutout must be >= 0"),
      (c.data.synthetic_size >= 1, f"--synthetic_size={c.data.synthetic_size} must be >= 1"),
  ]
  for ok, message in checks:
    if not ok:
      raise UserError(message)
  _check_model(config)


def _flag(setting: default.Setting) -> str:
  return f"--{setting.flag_name}" if setting.flag_name else f"--config.{setting.path}"


def get_value(config: ml_collections.ConfigDict, path: str) -> Any:
  value = config
  for part in path.split("."):
    value = value[part]
  return value


# ------------------------------------------------------------------ models
def build_model(config: ml_collections.ConfigDict, **run_overrides: Any):
  """The Flax module of ``config`` (``run_overrides``: e.g. ``attention_impl='einsum'``)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  run = {"num_classes": config.num_classes,
         "dtype": jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
         "attention_impl": config.attention_impl, **run_overrides}
  return models.MODEL_CLASSES[config.model_name](**dict(config.model), **run)


def model_differences(config: Mapping[str, Any] | ml_collections.ConfigDict) -> dict[str, Any]:
  """The hyper-parameters where ``config.model`` differs from its ``preset``."""
  try:
    preset = models.hyperparameters(config["model_name"], config["preset"])
  except ValueError:
    preset = {}
  return {k: v for k, v in dict(config["model"]).items() if _jsonish(preset.get(k)) != _jsonish(v)}


def _jsonish(value: Any) -> str:
  return json.dumps(value, sort_keys=True, default=str)


# ------------------------------------------------------------------ storage
def to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every resolved setting as plain JSON types (what ``config.json`` holds)."""
  return json.loads(_jsonish(config.to_dict()))


def _upgrade(content: dict[str, Any]) -> dict[str, Any]:
  """A ``config.json`` of an earlier version in today's layout."""
  content = dict(content)
  if content.get("recipe") == "tuned":  # aliases are recorded by their target since session 11:
    content["recipe"] = "tuned_v1"     # a config.json naming "tuned" ran when it meant tuned_v1
  if isinstance(content.get("model"), str):  # before ConfigDicts: family name + preset + overrides
    name = content.pop("model")
    overrides = content.pop("model_overrides", None) or {}
    content["model_name"] = name
    try:
      content["model"] = models.hyperparameters(name, content.get("preset", "seed"), **overrides)
    except ValueError as e:
      raise UserError(f"config.json names an unknown architecture ({e})") from None
  return content


def _tuples(value: Any) -> Any:
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def from_json(content: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A ``config.json`` (this version's or an earlier one's) as a ConfigDict; settings this
  version does not know are dropped, settings it added take their defaults."""
  content = _upgrade(dict(content))
  config = default.get_config()
  for setting in default.SETTINGS:
    *groups, name = setting.path.split(".")
    parent = content
    for group in groups:
      parent = parent.get(group) or {}
    if name in parent:
      set_value(config, setting.path, parent[name], f"config.json {setting.path}")
  name = config.model_name
  model = models.hyperparameters(name, "seed")
  model.update({k: _tuples(v) for k, v in (content.get("model") or {}).items()})
  config.model = model
  return config


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"augment": {"flip": True}}`` -> ``{"augment.flip": True}`` (the model dict kept whole)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and f"{prefix}{key}" != "model":
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def describe(config: ml_collections.ConfigDict) -> str:
  """``sa_cnn (tuned, widths=(48, 96, 192))``: the family, preset and changed hyper-parameters."""
  changes = model_differences(config)
  extra = "".join(f", {k}={v}" for k, v in sorted(changes.items()))
  return f"{config.model_name} ({config.preset}{extra})"

