"""Rewrites the recorded runs' config.json and metrics.jsonl (experiments/results/**) in the
current format.

    python experiments/migrate_records.py [--check]

Two earlier layouts are read: the flat one (``model`` the family's name, its network a named
``preset`` plus ``model_overrides``) and the ConfigDict one (``model`` a dict of the module's
fields at the time, a ``preset`` beside it). Their recipes are renamed for what they are
(``RENAMED``) and matched against the recipe files: a run whose settings are a recipe's is
named after it; another (a grid point) is named after its recipe plus the settings it changed.
Each metrics.jsonl record gets its ``kind``: an epoch's closing record followed the window
record of the same step.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from jax_attn import configs
from jax_attn.tools import comparisons

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
# The named networks of the flat layout.
PRESETS = {
    ("sa_cnn", "seed"): {},
    ("sa_cnn", "tuned"): {"widths": (40, 80, 160), "convs_per_stage": 2, "pool_stages": (0, 1, 2),
                          "attention_stages": (0, 1), "norm": "batch", "head": "gap_dense",
                          "attention_scale": "inv_sqrt_dim", "init_style": "flax"},
    ("vit", "seed"): {},
    ("vit", "tuned"): {"patch_size": 4, "hidden_dim": 128, "num_heads": 4, "mlp_dim": 256,
                       "depth": 4, "dropout_rate": 0.0, "attention_scale": "inv_sqrt_dim",
                       "norm_position": "pre", "token_init_std": 0.02, "init_style": "flax"},
    ("vit", "tuned_conv"): {"tokenizer": "conv", "stem_widths": (64,), "hidden_dim": 128,
                            "num_heads": 4, "mlp_dim": 128, "depth": 4, "dropout_rate": 0.0,
                            "attention_scale": "inv_sqrt_dim", "norm_position": "pre",
                            "token_init_std": 0.02, "init_style": "flax"},
}
# (family, recipe or preset of the earlier layouts) -> the recipe it is now.
RENAMED = {("sa_cnn", "seed"): "notebook", ("sa_cnn", "tuned"): "bn_adamw",
           ("sa_cnn", "tuned_v1"): "bn_adamw", ("sa_cnn", "tuned_v2"): "airbench",
           ("sa_cnn", "tuned_v2_noattn"): "airbench_noattn",
           ("sa_cnn", "tuned_v2_muon"): "airbench_muon",
           ("sa_cnn", "tuned_v3"): "airbench_muon_pool_first",
           ("sa_cnn", "tuned_v3_noattn"): "airbench_muon_pool_first_noattn",
           ("vit", "seed"): "notebook", ("vit", "tuned"): "patch4",
           ("vit", "tuned_conv"): "cct_adamw", ("vit", "tuned_v1"): "cct_adamw",
           ("vit", "tuned_v2"): "cct_seqpool", ("vit", "tuned_v3"): "conv_tokens_nolocal",
           ("vit", "tuned_v4"): "conv_tokens_local3", ("vit", "tuned_v5"): "conv_tokens"}
DROPPED = {"preset", "model_overrides", "model_name", "recipe", "model", "augment.cutout",
           "data.image_size"}


def _recipe_file(model: str) -> Any:
  spec = importlib.util.spec_from_file_location(f"recorded_{model}",
                                                ROOT / "experiments" / "recipes" / f"{model}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _network(family: str, fields: dict[str, Any]) -> dict[str, Any]:
  """An earlier layout's model fields as the module's fields now are."""
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
            if k != "attention_dropout_rate"}
  fields["pytorch_init"] = fields.pop("init_style", "torch") == "torch"
  if family == "sa_cnn":
    widths = fields.get("widths", (32, 64, 128, 256))
    if isinstance(fields.get("convs_per_stage", 1), int):
      fields["convs_per_stage"] = (fields.get("convs_per_stage", 1),) * len(widths)
    if fields.pop("pool_before_norm", False):
      fields["pool_position"] = "before_first_norm"
  else:
    fields["tokenizer"] = {"conv": "cct", "cnn": "airbench"}.get(fields.get("tokenizer", "patch"),
                                                                 fields.get("tokenizer", "patch"))
    stages = len(fields.get("stem_widths", (64,))) + 1
    if isinstance(fields.get("stem_convs", 1), int):
      fields["stem_convs"] = (fields.get("stem_convs", 1),) * stages
  return fields


def migrate(content: dict[str, Any]) -> dict[str, Any]:
  """One recorded config.json in the current format."""
  if isinstance(content["model"], str):  # the flat layout
    family = content["model"]
    fields = {**PRESETS[family, content.get("preset", "seed")],
              **(content.get("model_overrides") or {})}
    old_recipe = content.get("recipe") or content.get("preset", "seed")
    if old_recipe == "tuned":
      old_recipe = content.get("preset", "tuned")
  else:
    family, fields = content["model_name"], content["model"]
    old_recipe = content.get("recipe", "custom")
  config = configs.base(family)
  config.model.update(_network(family, fields))
  for path, value in configs.flatten(content).items():
    if path not in DROPPED and not path.startswith(("model.", "model_overrides.")):
      configs.set_value(config, path, value, f"config.json {path}")
  # jax.nn.dot_product_attention, an attention path no longer offered: named in the recipe
  fused = content.get("attention_impl") == "fused"
  if fused:
    config.attention_impl = "einsum"
  config.class_names = CIFAR10
  if config.data.image_folder or config.data.cifar_archive or not config.data.synthetic:
    config.num_classes = 10
  config.recipe = _name(config, RENAMED[family, old_recipe])
  if fused:
    config.recipe = config.recipe[:-1] + ", attention_impl=fused)"
  configs.validate(config)
  return configs.to_json(config)


def _name(config: Any, base: str) -> str:
  """The recipe whose settings the run has (``base`` first), else ``base(setting=value, ...)``
  naming the settings it changed."""
  ignored = comparisons.NOT_RECIPE + ("recipe",)
  recorded, packaged = _recipe_file(config.model_name), configs.recipe_module(config.model_name)
  recipes = {name: module for module in (recorded, packaged) for name in module.RECIPES}
  ours = configs.flatten(json.loads(comparisons.settings_key(config, ignored)))
  differences = {}
  for name in [base] + sorted(recipes):
    theirs = configs.flatten(json.loads(comparisons.settings_key(
        recipes[name].get_config(name), ignored)))
    changed = [f"{k}={_short(v)}" for k, v in sorted(ours.items())
               if k != "model" and v != theirs.get(k)]
    changed += [f"model.{k}={_short(v)}" for k, v in sorted(ours["model"].items())
                if v != theirs["model"].get(k)]
    if not changed:
      return name
    differences[name] = changed
  return f"{base}({', '.join(differences[base])})"


def _short(value: Any) -> str:
  return json.dumps(value).replace('"', "").replace(" ", "")


def with_kinds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """metrics.jsonl records with their ``kind``: ``epoch`` for a record at its predecessor's
  step (an epoch's closing record), else ``window``."""
  steps = [None] + [r["step"] for r in records]
  return [{"kind": r.get("kind") or ("epoch" if r["step"] == before else "window"), **r}
          for r, before in zip(records, steps)]


def main(argv: list[str]) -> int:
  changed = 0
  for path in sorted(RESULTS.rglob("config.json")):
    content = json.loads(path.read_text())
    new = migrate(content) if "class_names" not in content else content
    if new != content:
      changed += 1
      print(f"{path.relative_to(ROOT)}: {new['recipe']}")
      if "--check" not in argv:
        path.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")
  for path in sorted(RESULTS.rglob("metrics.jsonl")):
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if any("kind" not in r for r in records):
      changed += 1
      if "--check" not in argv:
        path.write_text("".join(json.dumps(r) + "\n" for r in with_kinds(records)))
  print(f"{changed} files {'to migrate' if '--check' in argv else 'migrated'}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
