"""The command lines in-process: flags, precedence, one-line errors (no training)."""
import pytest
from absl import flags

from jax_attn import configs, launch, main, predict
from jax_attn.errors import UserError

from conftest import TINY, TINY_RECIPE


def _config(*args):
  """The config ``python -m jax_attn.main ARGS`` would train."""
  argv, flag_values = configs.with_packaged_config(["main", *args]), flags.FlagValues()
  cli = main.define_flags(flag_values, argv)
  main.parse(argv, flag_values)
  return main.build_config(cli)


def test_a_flag_wins_over_config_which_wins_over_the_recipe():
  config = _config(f"--config={TINY_RECIPE}:vit", "--config.epochs=1",
                   "--config.learning_rate=0.02", "--learning_rate=0.03",
                   "--config.augment.flip=True", "--noaugment_flip", "--augment_crop_padding=2")
  assert config.epochs == 1  # --config.epochs over the recipe's 10
  assert config.learning_rate == 0.03  # --learning_rate over --config.learning_rate
  assert config.augment.flip is False  # --noaugment_flip over --config.augment.flip
  assert config.augment.crop_padding == 2 and config.recipe == "tiny"
  assert _config("--model=vit", "--recipe=tuned").recipe == "conv_tokens"  # the alias's target


@pytest.mark.parametrize("args, message", [
    (["--model=resnet"], "--model=resnet is unknown: use one of sa_cnn, vit"),
    (["stray"], "unexpected argument 'stray': every setting is a --flag"),
    (["--learning_rate=-1"], "--learning_rate=-1.0 must be positive"),
    (["--epochs=0"], "--epochs=0 must be at least 1"),
    (["--momentum=1"], "--momentum=1.0 must be in [0, 1)"),
    (["--optimizer=lion"], "--optimizer=lion is unknown: use one of adam, adamw, sgd, muon"),
    (["--model=sa_cnn", "--recipe=fancy"], "--recipe=fancy is unknown for sa_cnn: use one of "
                                           "notebook, airbench, airbench_noattn"),
    (["--model=vit", "--config=x.py"], "x.py"),
    (["--model=sa_cnn", "--config.model.widths=(0,)", "--image_size=8"],
     "SACNN widths must be positive"),
    (["--model=vit", "--config.model.depth=0", "--image_size=8"], "ViT depth must be positive"),
    (["--model=vit", "--config.model.depth=abc"],
     "flag --config.model.depth=abc: invalid literal for int() with base 10: 'abc'"),
    (["--model=vit", "--config.model.depht=2"], '--config.model.depht: the config has no setting '
                                               'model.depht; did you mean "depth"?'),
    (["--config.model.depth=3"], "--config.model.depth: the config has no setting model.depth"),
    (["--config.nonexistent=1"], "--config.nonexistent: the config has no setting nonexistent"),
    (["--epochs=ten"], "epochs"),
    ([f"--config={TINY_RECIPE}:sa_cnn", "--model=vit"], "--model=vit but"),
])
def test_bad_command_lines_are_one_line(args, message):
  with pytest.raises(UserError) as error:
    _config(*TINY, *args)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_predicts_lines_and_map_names():
  result = {"image": "cat.jpg", "top_k": [{"class": "cat", "probability": 0.912},
                                          {"class": "dog", "probability": 0.051}]}
  assert predict.format_line(result) == "cat.jpg: cat 91.2 %, dog 5.1 %"
  assert [p.name for p in predict.map_paths("out/att.png", 1)] == ["att.png"]
  assert [p.name for p in predict.map_paths("att.png", 2)] == ["att_0.png", "att_1.png"]
  cli = predict.define_flags(flags.FlagValues())
  assert cli.top_k.default == 3 and cli.flip.default is None


def test_launch_reads_its_own_flags_and_passes_the_rest():
  assert launch._parse(["--num_processes=2", "--coordinator=h:1", "--", "--model=vit"]) == (
      2, "h:1", ["--model=vit"])
  with pytest.raises(SystemExit, match="launch: cannot use '--num_processes=0'"):
    launch._parse(["--num_processes=0", "--"])
