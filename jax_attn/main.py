"""Command line: ``python -m jax_attn.main --model=sa_cnn [--recipe=tuned]``, or a recipe file:
``python -m jax_attn.main --config=jax_attn/configs/vit.py:tuned --config.model.depth=6``.

``--model``/``--recipe`` are the shorthand for ``--config=<package>/configs/MODEL.py:RECIPE``.
The other ``--flags`` of a setting (``--epochs``, ``--augment_flip``, ``--image_folder``...) are
generated from the schema (``configs/default.py``) and override the config's value.
"""
from __future__ import annotations

import os
import re
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jax_attn import config as config_lib
from jax_attn import distributed, run_guard
from jax_attn import configs
from jax_attn.configs import MODEL_FILES, default
from jax_attn.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file PATH[:ARG] returning a ConfigDict from get_config(ARG); "
    "override single values with --config.PATH=VALUE. Default: the --model/--recipe file.")
_MODEL = flags.DEFINE_string("model", None, f"Model family ({', '.join(MODEL_FILES)}): "
                             "shorthand for --config=<package>/configs/MODEL.py:RECIPE (default sa_cnn).")
_RECIPE = flags.DEFINE_string(
    "recipe", None, "Recipe of the packaged file: seed (the reference notebook), tuned (the best "
    "measured: tuned_v2 for sa_cnn, tuned_v5 for vit), tuned_v1, tuned_v2, ... (each file's "
    "RECIPES; default seed).")
_MODEL_ARG = flags.DEFINE_multi_string(
    "model_arg", [], "Model hyper-parameter override KEY=VALUE, e.g. --model_arg=depth=6 "
    "(repeatable; same as --config.model.KEY, but a value may change type).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and checkpoint directory; rerunning in it "
                               "resumes. Default runs/MODEL_RECIPE.")
_DISTRIBUTED = flags.DEFINE_boolean("distributed", False, "Join a multi-process job via jax.distributed (auto-detects SLURM / Cloud TPU when no coordinator is given).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 for --distributed (launch.sh sets $JAX_ATTN_COORDINATOR).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (launch.sh sets $JAX_ATTN_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1 (launch.sh sets $JAX_ATTN_PROCESS_ID).")
_NUM_CPU_DEVICES = flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into N devices (for trying data parallelism without accelerators).")

_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def _define_setting_flags() -> dict[str, flags.FlagHolder]:
  """One ``--flag`` per schema setting that has one (default None: the config's value)."""
  holders = {}
  for setting in default.SETTINGS:
    if setting.flag_name:
      choices = f" One of: {', '.join(setting.choices)}." if setting.choices else ""
      holders[setting.path] = _DEFINE[setting.value_type](
          setting.flag_name, None, f"{setting.help}{choices} (--config.{setting.path})")
  return holders


_SETTING_FLAGS = _define_setting_flags()


def build_config():
  """The recipe (file + --config.* overrides), then the setting flags, checked."""
  if _CONFIG.value is None:  # --model named no packaged file
    raise UserError(f"--model={_MODEL.value} is unknown: use one of {', '.join(MODEL_FILES)}")
  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):
    filename = config_flags.get_config_filename(flags.FLAGS["config"])
    reason = f"its get_config() returned {type(config).__name__}, not a ConfigDict"
    try:
      config.lock()  # an unloadable file: ml_collections raises its load error here
    except OSError as e:
      reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    except AttributeError:
      pass
    raise UserError(f"--config={filename} cannot be used: {reason}")
  if _MODEL.value and _MODEL.value != config.model_name:
    raise UserError(f"--model={_MODEL.value} but {config_flags.get_config_filename(flags.FLAGS['config'])}"
                    f" is a {config.model_name} recipe: drop --model or use a {_MODEL.value} file")
  preset = _SETTING_FLAGS["preset"].value
  if preset is not None:  # a whole architecture: then reapply the --config.model.* overrides
    config_lib.apply_preset(config, preset)
    for path, value in config_flags.get_override_values(flags.FLAGS["config"]).items():
      if path.startswith("model."):
        config_lib.set_value(config, path, value)
  for path, holder in _SETTING_FLAGS.items():
    if holder.value is not None and path != "preset":
      config_lib.set_value(config, path, holder.value, f"--{holder.name}")
  config_lib.set_model_args(config, _MODEL_ARG.value)
  config_lib.validate(config)
  return config


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a bad flag reported on one line and exit 2 (not a usage dump)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()] or [str(e)]
    message = re.sub(r"^[A-Za-z.]*Error: ", "", lines[-1])
  except (KeyError, AttributeError) as e:  # ml_collections: --config.PATH names no setting
    key = str(e).strip("\"'")
    paths = [arg[len("--config."):].split("=")[0] for arg in argv if arg.startswith("--config.")]
    path = next((p for p in paths if p.split(".")[-1] == key), key)
    message = (f"--config.{path}: the config has no setting {path} (the schema is "
               "jax_attn/configs/default.py; config.model holds the model's hyper-parameters)")
  sys.stderr.write(f"jax_attn: error: {message}\n")
  sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if _NUM_CPU_DEVICES.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", _NUM_CPU_DEVICES.value)
  env_coordinator, env_num, env_id = distributed.settings_from_env()
  coordinator = _COORDINATOR.value or env_coordinator
  num_processes = _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else env_num
  process_id = _PROCESS_ID.value if _PROCESS_ID.value is not None else env_id
  if _DISTRIBUTED.value or coordinator or num_processes is not None:
    distributed.initialize(coordinator, num_processes, process_id)
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  try:
    from jax_attn import trainer  # pylint: disable=g-import-not-at-top
    config = build_config()
    workdir = _WORKDIR.value or f"runs/{config.model_name}_{config.recipe}"
    trainer.train_and_evaluate(config, workdir)
  except UserError as e:
    sys.stderr.write(f"jax_attn: error: {e}\n")
    sys.exit(2)
  except run_guard.StoppedBySignal as e:
    sys.stderr.write(f"jax_attn: {e}\n")
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    sys.stderr.write("jax_attn: interrupted; rerun the same command to resume from the last checkpoint\n")
    sys.exit(130)


def run() -> None:
  sys.argv = configs.with_packaged_config(sys.argv)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
