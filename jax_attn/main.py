"""Trains a model: ``python -m jax_attn.main --model=vit --recipe=conv_tokens``.

A run's settings come from a recipe (``--model``/``--recipe`` name a packaged one, ``--config=
PATH[:ARG]`` any recipe file), then ``--config.PATH=VALUE`` overrides, then the ``--flags``
generated from the schema (``configs/default.py``): a ``--flag`` wins over the same
``--config.PATH``, which wins over the recipe.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import types

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from jax_attn import configs, models
from jax_attn.configs import default
from jax_attn.errors import UserError
from jax_attn.train import distributed, guard

_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None
                 ) -> types.SimpleNamespace:
  """Defines the command line's flags in ``flag_values`` (importing this module defines none)
  and returns their holders; ``settings`` maps each schema path with a flag to its holder.
  ``argv`` (default ``sys.argv``) names the ``--config.PATH`` overrides to define."""
  fv = {"flag_values": flag_values}
  ns = types.SimpleNamespace(
      config=config_flags.DEFINE_config_file(
          "config", None, "Recipe file PATH[:ARG]: its get_config(ARG) returns the settings; "
          "--config.PATH=VALUE overrides one. Default: the --model/--recipe file.",
          sys_argv=argv, **fv),
      model=flags.DEFINE_string("model", None, f"Model family, {' or '.join(models.MODELS)}: "
                                "picks the packaged recipe file (default sa_cnn).", **fv),
      recipe=flags.DEFINE_string("recipe", None, "Recipe of the packaged file (default "
                                 "notebook); tuned: the best measured.", **fv),
      workdir=flags.DEFINE_string("workdir", None, "Outputs and checkpoints; rerunning in it "
                                  "resumes. Default: runs/MODEL_RECIPE.", **fv),
      distributed=flags.DEFINE_boolean("distributed", False, "Join a multi-process job through "
                                       "jax.distributed (auto-detects SLURM and Cloud TPU).",
                                       **fv),
      coordinator=flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 "
                                      "(launch.sh sets it).", **fv),
      num_processes=flags.DEFINE_integer("num_processes", None, "Processes in the job "
                                         "(launch.sh sets it).", **fv),
      process_id=flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1 "
                                      "(launch.sh sets it).", **fv),
      num_cpu_devices=flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into N "
                                           "devices (to try data parallelism).", **fv),
      settings={}, flag_values=flag_values)
  for setting in default.SETTINGS:  # unset (None) leaves the recipe's value
    if setting.flag_name:
      choices = f" One of: {', '.join(setting.choices)}." if setting.choices else ""
      ns.settings[setting.path] = _DEFINE[setting.value_type](
          setting.flag_name, None, f"{setting.help}{choices} Schema default: {setting.default}; "
          f"the recipe may set another. (--config.{setting.path})", **fv)
  return ns


def build_config(cli: types.SimpleNamespace) -> ml_collections.ConfigDict:
  """The recipe with its ``--config.*`` overrides, then the setting flags; checked."""
  if cli.config.value is None:  # --model named no packaged file
    raise UserError(f"--model={cli.model.value} is unknown: use one of {', '.join(models.MODELS)}")
  config = cli.config.value
  filename = config_flags.get_config_filename(cli.flag_values["config"])
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"--config={filename} cannot be used: its get_config() returned "
                    f"{type(config).__name__}, not a ConfigDict")
  if cli.model.value and cli.model.value != config.model_name:
    raise UserError(f"--model={cli.model.value} but {filename} is a {config.model_name} recipe: "
                    f"drop --model or use a {cli.model.value} recipe")
  for path, holder in cli.settings.items():
    if holder.value is not None:
      configs.set_value(config, path, holder.value, f"--{holder.name}")
  configs.validate(config)
  return config


def parse(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's parser; a bad flag or argument is a UserError of one line."""
  try:
    rest = flag_values(argv)
  except flags.Error as e:
    lines = [line for line in str(e).splitlines() if line.strip()] or [str(e)]
    raise UserError(re.sub(r"^[A-Za-z.]*Error: ", "", lines[-1])) from None
  except (KeyError, AttributeError) as e:  # ml_collections: --config.PATH names no setting
    while isinstance(e, Exception) and e.args:  # a KeyError inside an AttributeError
      e = e.args[0]
    text = str(e)
    key = re.sub(r"\W", "", text.splitlines()[0])
    paths = [arg[len("--config."):].split("=")[0] for arg in argv if arg.startswith("--config.")]
    path = next((p for p in paths if p.split(".")[-1] == key), key)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    raise UserError(f"--config.{path}: the config has no setting {path}"
                    + (f'; did you mean "{hint[1]}"?' if hint else "")
                    + " (the settings are in jax_attn/configs/default.py; config.model holds "
                      "the model's hyper-parameters)") from None
  if len(rest) > 1:
    raise UserError(f"unexpected argument {rest[1]!r}: every setting is a --flag "
                    "(python -m jax_attn.main --help lists them)")
  return rest


def _parse_flags(argv: list[str]) -> list[str]:
  """``parse`` for ``app.run``: a bad command line is one line on stderr and exit 2."""
  try:
    return parse(argv)
  except UserError as e:  # (also raised by a recipe file: an unknown --recipe)
    sys.stderr.write(f"jax_attn: error: {e}\n")
    sys.exit(2)


def main(argv: list[str], cli: types.SimpleNamespace) -> None:
  del argv  # _parse_flags refused positional arguments
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if cli.num_cpu_devices.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", cli.num_cpu_devices.value)
  env_coordinator, env_num, env_id = distributed.settings_from_env()
  coordinator = cli.coordinator.value or env_coordinator
  num_processes = cli.num_processes.value if cli.num_processes.value is not None else env_num
  process_id = cli.process_id.value if cli.process_id.value is not None else env_id
  if cli.distributed.value or coordinator or num_processes is not None:
    distributed.initialize(coordinator, num_processes, process_id)
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  try:
    from jax_attn.train import loop  # pylint: disable=g-import-not-at-top
    config = build_config(cli)
    loop.train_and_evaluate(config, cli.workdir.value or f"runs/{config.model_name}_{config.recipe}")
  except UserError as e:
    sys.stderr.write(f"jax_attn: error: {e}\n")
    sys.exit(2)
  except guard.StoppedBySignal as e:
    sys.stderr.write(f"jax_attn: {e}\n")
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    sys.stderr.write("jax_attn: interrupted; rerun the same command to resume from the last "
                     "checkpoint\n")
    sys.exit(130)


def run() -> None:
  cli = define_flags()
  sys.argv = configs.with_packaged_config(sys.argv)
  app.run(functools.partial(main, cli=cli), flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
