"""End-to-end CLI runs on tiny synthetic data: outputs, learning, bad flags, guards."""
import json

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jax_attn.train import loop
from conftest import TINY, tiny


def test_trains_and_writes_results(main_cli, tmp_path):
  out = main_cli([*tiny("vit"), "--epochs=3", "--learning_rate=1e-2",
                  f"--workdir={tmp_path}"])
  summary = json.loads((tmp_path / "summary.json").read_text())
  for key in ("model", "recipe", "params", "epochs", "steps", "eval_accuracy", "eval_loss",
              "train_wall_s", "train_images_per_sec", "devices", "backend", "dtype",
              "parallel", "jax_version"):
    assert key in summary, key
  assert summary["model"] == "vit" and summary["steps"] == 3 * 256 // 16
  assert summary["eval_examples"] == 51  # every eval image counted exactly once (51 = 256 // 5)
  assert summary["eval_accuracy"] > 0.6, summary  # chance is 0.1
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == sorted(r["step"] for r in records)
  epoch_ends = [r for r in records if r["eval_accuracy"] is not None]
  assert [r["epoch"] for r in epoch_ends] == [1, 2, 3]
  assert "Loss:" in out.stdout and "Epoch [3]" in out.stdout
  assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 1e-2
  assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("args, message", [
    (["--model=resnet"], "--model=resnet is unknown: use one of sa_cnn, vit"),
    (["stray"], "unexpected argument 'stray': every setting is a --flag"),
    (["--learning_rate=-1"], "--learning_rate=-1.0 must be positive"),
    (["--epochs=0"], "--epochs=0 must be at least 1"),
    (["--num_cpu_devices=4", "--parallel=pmap", "--batch_size=6"],
     "--batch_size=6 is not divisible by the 4 devices"),
    (["--nosynthetic", "--image_folder=/nonexistent"], "--image_folder=/nonexistent does not exist"),
    (["--cifar_archive=/x"], "choose one data source, not --cifar_archive and --synthetic"),
    (["--model=sa_cnn", "--recipe=fancy"], "--recipe=fancy is unknown for sa_cnn: use one of "
                                           "notebook, airbench, airbench_noattn"),
    (["--optimizer=lion"], "--optimizer=lion is unknown: use one of adam, adamw, sgd"),
    (["--model=sa_cnn", "--config.model.widths=(0,)"], "SACNN widths must be positive"),
    (["--model=vit", "--config.model.depth=0"], "ViT depth must be positive"),
    (["--model=vit", "--config.model.depth=abc"], "config.model.depth"),
    (["--model=vit", "--config.model.depht=2"], '--config.model.depht: the config has no setting '
                                               'model.depht; did you mean "depth"?'),
    (["--config.model.depth=3"], "--config.model.depth: the config has no setting model.depth"),
    (["--config.nonexistent=1"], "--config.nonexistent: the config has no setting nonexistent"),
    (["--epochs=ten"], "epochs"),
])
def test_bad_flags_fail_with_one_line(main_cli, tmp_path, args, message):
  base = [a for a in TINY if not any(a.startswith(b.split("=")[0] + "=") for b in args)]
  result = main_cli([*base, f"--workdir={tmp_path / 'w'}", *args], check=False)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jax_attn: error: "), result.stderr
  assert message in result.stderr
  assert not (tmp_path / "w").exists()  # nothing written


def test_refuses_to_resume_another_architecture(main_cli, tmp_path):
  main_cli([*tiny("vit"), "--max_steps=4", f"--workdir={tmp_path}"])
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  result = main_cli([*tiny("sa_cnn"), "--max_steps=4", f"--workdir={tmp_path}"],
                    check=False)
  assert result.returncode == 2
  assert "another architecture" in result.stderr and "model_name: 'vit' -> 'sa_cnn'" in result.stderr
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_diverging_loss_stops_and_keeps_good_checkpoints(main_cli, tmp_path):
  result = main_cli([*tiny("vit"), "--optimizer=sgd", "--learning_rate=1e12",
                     "--checkpoint_every_steps=1", f"--workdir={tmp_path}"], check=False)
  assert result.returncode == 2, result.stderr
  assert "non-finite" in result.stderr or "loss became" in result.stderr
  assert "at step" in result.stderr or "by step" in result.stderr
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  for step in manager.all_steps():
    tree = manager.restore(step)
    leaves = [np.asarray(x) for x in __import__("jax").tree.leaves(tree["state"]["params"])]
    assert all(np.all(np.isfinite(x)) for x in leaves), step


def test_jax_debug_nans_names_the_op_in_any_step(main_cli, tmp_path):
  # The NaN first appears in step 2's output: JAX's check must still be armed after step 1's
  # trace (run_guard.armed_nan_checks), and name the op and our source line, not only the step.
  result = main_cli([*tiny("vit"), "--optimizer=sgd", "--learning_rate=1e12",
                     "--log_every_steps=1", "--max_steps=4", f"--workdir={tmp_path}"],
                    env={"JAX_DEBUG_NANS": "True"}, check=False)
  assert result.returncode != 0
  assert "FloatingPointError: invalid value (nan) encountered in" in result.stderr, result.stderr
  assert "jax_attn/" in result.stderr.split("FloatingPointError")[0]  # the model's own frames
  assert "loss became" not in result.stderr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_divergence_error_names_the_checkpoint_and_what_to_change(tmp_path, dtype):
  message = str(loop.diverged("the training loss became nan at step 5", tmp_path, dtype))
  assert message.startswith("the training loss became nan at step 5: stopping;")
  assert f"the last good checkpoint in {tmp_path / 'checkpoints'} is kept" in message
  assert "--learning_rate" in message and "--grad_clip_norm" in message
  assert ("--dtype=float32" in message) == (dtype == "bfloat16"), message
  assert "\n" not in message


def test_unreadable_latest_checkpoint_falls_back(main_cli, tmp_path):
  args = [*tiny("vit"), "--epochs=2", f"--workdir={tmp_path}"]
  main_cli(args)
  latest = tmp_path / "checkpoints" / "32"
  for path in latest.rglob("*"):
    if path.is_file() and "manifest" in path.name or path.suffix == "" and path.is_file():
      path.write_bytes(b"garbage")
  result = main_cli(args)
  assert "unreadable" in result.stdout
  assert list((tmp_path / "unreadable_checkpoints").iterdir())  # moved aside, not deleted
  assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 32


def test_bfloat16_compute_keeps_float32_params(main_cli, tmp_path):
  main_cli([*tiny("vit"), "--max_steps=6", "--dtype=bfloat16", f"--workdir={tmp_path}"])
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["dtype"] == "bfloat16" and np.isfinite(summary["eval_loss"])
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  params = manager.restore(manager.latest_step())["state"]["params"]
  assert {np.asarray(x).dtype for x in __import__("jax").tree.leaves(params)} == {np.dtype("float32")}


def test_rerunning_a_finished_run_only_evaluates_it(main_cli, tmp_path):
  """The documented way to add flip test-time augmentation to a finished run."""
  args = [*tiny("vit"), "--epochs=1", f"--workdir={tmp_path}"]
  main_cli(args)
  before = json.loads((tmp_path / "summary.json").read_text())
  records = (tmp_path / "metrics.jsonl").read_text()
  out = main_cli([*args, "--eval_flip"])
  after = json.loads((tmp_path / "summary.json").read_text())
  assert "changed settings: eval_flip" in out.stdout
  assert after["steps"] == before["steps"] and after["train_wall_s"] == before["train_wall_s"]
  assert after["eval_flip"] and after["eval_accuracy_no_flip"] == before["eval_accuracy"]
  assert (tmp_path / "metrics.jsonl").read_text() == records  # no training happened
