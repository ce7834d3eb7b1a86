"""Comparisons across finished runs for the report: repeats of one recipe (mean +- std over
seeds) and the attention ablation (the same recipe with and without attention layers)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from jax_attn import configs

# Settings that do not change what a run learns: runs differing only in these (and the seed)
# are repeats of one recipe.
NOT_RECIPE = ("seed", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "parallel",
              "cpu_kernels", "attention_impl", "image_size", "class_names", "data.image_folder",
              "data.data_dir", "data.cifar_archive", "data.dataset", "eval_every_epochs")
# What an attention ablation changes besides: the recipe's name and the widths that keep the
# parameter count.
_ABLATED = ("recipe", "model.attention_stages", "model.widths")


def run_name(workdir: Path) -> str:
  """A workdir's name, with its parent for the ``seedN`` records (``vit_conv_tokens/seed0``):
  several recorded groups have a ``seed0``."""
  return f"{workdir.parent.name}/{workdir.name}" if re.fullmatch(r"seed\d+", workdir.name) \
      else workdir.name


def settings_key(config: Any, ignored: tuple[str, ...]) -> str:
  """A config's settings without ``ignored``, as one comparable string."""
  settings = configs.flatten(configs.to_json(config))
  settings["model"] = {k: v for k, v in settings["model"].items() if f"model.{k}" not in ignored}
  return json.dumps({k: v for k, v in settings.items() if k not in ignored}, sort_keys=True)


def groups_by_settings(runs: list[dict[str, Any]],
                       ignored: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
  """Finished runs keyed by their settings without ``ignored`` (``settings_key``)."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for run in runs:
    if run["summary"] is not None:
      groups.setdefault(settings_key(run["config"], ignored), []).append(run)
  return groups


def _accuracies(members: list[dict[str, Any]], key: str = "eval_accuracy") -> list[float | None]:
  return [m["summary"].get(key) for m in members]


def mean_std(values: list[float | None]) -> str:
  if any(v is None for v in values):
    return "-"
  if len(values) == 1:
    return f"{values[0]:.2%} (n=1)"
  return f"{np.mean(values):.2%} +- {np.std(values, ddof=1):.2%} (n={len(values)})"


def seed_groups(runs: list[dict[str, Any]]) -> str:
  """Runs that differ only in their seed, finished ones only: mean +- sample std of accuracy."""
  rows = ["| recipe | parameters | seeds | eval accuracy (mean +- std) "
          "| without TTA | runs |", "|" + "---|" * 6]
  for members in groups_by_settings(runs, NOT_RECIPE).values():
    if len(members) < 2:
      continue
    config, summary = members[0]["config"], members[0]["summary"]
    rows.append(f"| {configs.describe(config)} | "
                f"{summary['params']:,} | {', '.join(str(m['config'].seed) for m in members)} | "
                f"{mean_std(_accuracies(members))} | "
                f"{mean_std(_accuracies(members, 'eval_accuracy_no_flip'))} | "
                f"{', '.join(run_name(m['dir']) for m in members)} |")
  return "\n".join(rows) if len(rows) > 2 else ""


def paired_by_seed(with_attn: list[dict[str, Any]], without: list[dict[str, Any]]) -> str:
  """The differences of the seeds run on both sides: a seed fixes the data order and the flips
  of both runs (not their initial weights, which differ with the architecture)."""
  accuracy = [{m["config"].seed: m["summary"].get("eval_accuracy") for m in side}
              for side in (with_attn, without)]
  seeds = sorted(set(accuracy[0]) & set(accuracy[1]))
  if len(seeds) < 2:
    return ""
  diffs = [100 * (accuracy[0][s] - accuracy[1][s]) for s in seeds]
  return (" Paired by seed (" + ", ".join(f"seed {s} {d:+.2f}" for s, d in zip(seeds, diffs))
          + f"): {np.mean(diffs):+.2f} +- {np.std(diffs, ddof=1):.2f} points.")


def attention_ablation(runs: list[dict[str, Any]]) -> str:
  """For each recipe run both with attention layers and without (``attention_stages=()``,
  otherwise the same settings but for widths): the two means and a plain verdict. The
  difference counts as measurable only beyond two standard errors, with >= 2 seeds a side."""
  lines = []
  for members in groups_by_settings(runs, NOT_RECIPE + _ABLATED).values():
    sides: dict[bool, list[dict[str, Any]]] = {}
    for m in members:
      sides.setdefault(bool(m["config"].model.get("attention_stages", True)), []).append(m)
    if len(sides) < 2:
      continue
    with_attn, without = sides[True], sides[False]
    a, b = _accuracies(with_attn), _accuracies(without)
    diff = np.mean(a) - np.mean(b)
    if min(len(a), len(b)) < 2:
      verdict = "too few seeds to tell (one seed's noise on 5,000 images is ~0.5 point)"
    else:
      error = np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
      verdict = (f"attention {'helps' if diff > 0 else 'hurts'} (beyond 2 standard errors, "
                 f"{2 * error:.2%})" if abs(diff) > 2 * error else
                 f"no measurable effect (within 2 standard errors, {2 * error:.2%})")
    config = with_attn[0]["config"]
    lines.append(
        f"- {config.model_name} {config.recipe} ({with_attn[0]['summary']['params']:,} "
        f"parameters) against {without[0]['config'].recipe} "
        f"({without[0]['summary']['params']:,}): {mean_std(a)} with attention, {mean_std(b)} "
        f"without; difference {100 * diff:+.2f} points"
        f" ({mean_std(_accuracies(with_attn, 'eval_accuracy_no_flip'))} against "
        f"{mean_std(_accuracies(without, 'eval_accuracy_no_flip'))} without TTA): {verdict}."
        + paired_by_seed(with_attn, without))
  return "\n".join(lines)
