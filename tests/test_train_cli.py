"""End-to-end CLI runs on tiny synthetic data: outputs, learning, bad flags, guards."""
import json
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jax_attn.train import loop
from conftest import TINY, tiny


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [  # the rest in test_cli.py, in-process
    (["stray"], "unexpected argument 'stray': every setting is a --flag"),
    (["--model=sa_cnn", "--recipe=fancy"], "--recipe=fancy is unknown for sa_cnn"),
    (["--model=vit", "--config.model.depht=2"], 'did you mean "depth"?'),
    (["--epochs=0"], "--epochs=0 must be at least 1"),
    (["--num_cpu_devices=4", "--parallel=pmap", "--batch_size=6"],
     "--batch_size=6 is not divisible by the 4 devices"),
    (["--nosynthetic", "--image_folder=/nonexistent"], "--image_folder=/nonexistent does not exist"),
    (["--cifar_archive=/x"], "choose one data source, not --cifar_archive and --synthetic"),
])
def test_bad_flags_fail_with_one_line(main_cli, tmp_path, args, message):
  base = [a for a in TINY if not any(a.startswith(b.split("=")[0] + "=") for b in args)]
  result = main_cli([*base, f"--workdir={tmp_path / 'w'}", *args], check=False)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jax_attn: error: "), result.stderr
  assert message in result.stderr
  assert not (tmp_path / "w").exists()  # nothing written


@pytest.mark.slow
def test_refuses_to_resume_another_architecture(main_cli, tmp_path):
  main_cli([*tiny("vit"), "--max_steps=4", f"--workdir={tmp_path}"])
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  result = main_cli([*tiny("sa_cnn"), "--max_steps=4", f"--workdir={tmp_path}"],
                    check=False)
  assert result.returncode == 2
  assert "another architecture" in result.stderr and "model_name: 'vit' -> 'sa_cnn'" in result.stderr
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_diverging_loss_stops_and_keeps_good_checkpoints(main_cli, tmp_path):
  result = main_cli([*tiny("vit"), "--optimizer=sgd", "--learning_rate=1e12",
                     "--checkpoint_every_steps=1", f"--workdir={tmp_path}"], check=False)
  assert result.returncode == 2, result.stderr
  diverged = re.search(r"(?:loss became \S+ at|non-finite by) step (\d+)", result.stderr)
  assert diverged, result.stderr
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  kept = manager.all_steps()
  assert kept and max(kept) < int(diverged[1]), (kept, result.stderr)  # the good ones, kept
  for step in kept:
    tree = manager.restore(step)
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree["state"]["params"])]
    assert all(np.all(np.isfinite(x)) for x in leaves), step


@pytest.mark.slow
def test_jax_debug_nans_names_the_op_in_any_step(main_cli, tmp_path):
  # The NaN first appears in step 2's output: JAX's check must still be armed after step 1's
  # trace (guard.armed_nan_checks), and name the op and our source line, not only the step.
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


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back(main_cli, tmp_path):
  args = [*tiny("vit"), "--epochs=2", f"--workdir={tmp_path}"]
  main_cli(args)
  latest = tmp_path / "checkpoints" / "32"
  for path in latest.rglob("*"):
    if path.is_file() and "manifest" in path.name or path.suffix == "" and path.is_file():
      path.write_bytes(b"garbage")
  result = main_cli(args)
  assert "checkpoint at step 32 is unreadable" in result.stdout
  assert "resumed from the checkpoint at step 16" in result.stdout  # the one before it
  assert [p.name.split("-")[0] for p in (tmp_path / "unreadable_checkpoints").iterdir()] == [
      "32"]  # moved aside, not deleted
  assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 32


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(main_cli, tmp_path):
  main_cli([*tiny("vit"), "--max_steps=6", "--dtype=bfloat16", f"--workdir={tmp_path}"])
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["dtype"] == "bfloat16" and np.isfinite(summary["eval_loss"])
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  params = manager.restore(manager.latest_step())["state"]["params"]
  assert {np.asarray(x).dtype for x in jax.tree.leaves(params)} == {np.dtype("float32")}


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_run_stopped_inside_an_epoch_records_its_evaluation_and_resumes_its_means(main_cli,
                                                                                    tmp_path):
  """--max_steps=20 stops 4 steps into epoch 2 (16 steps an epoch): metrics.jsonl and
  TensorBoard get the final evaluation in an ``end`` record; a rerun to 32 steps drops that
  record and ends with the uninterrupted run's epoch-2 means."""
  args = [*tiny("vit"), "--epochs=2"]
  main_cli([*args, "--max_steps=20", f"--workdir={tmp_path / 'stopped'}"])
  records = [json.loads(line) for line in (tmp_path / "stopped" / "metrics.jsonl").read_text()
             .splitlines()]
  summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
  end = records[-1]
  assert (end["kind"], end["step"], end["epoch"]) == ("end", 20, 2)
  assert end["eval_accuracy"] == summary["eval_accuracy"] is not None
  assert [r["kind"] for r in records].count("epoch") == 1  # epoch 1's closing record
  assert all(r["kind"] in ("window", "epoch", "end") for r in records)
  first, second = records[0], records[1]  # windows of 4 steps; the first one compiled
  assert first["images_per_sec"] > 0.2 * second["images_per_sec"], (first, second)
  main_cli([*args, f"--workdir={tmp_path / 'stopped'}"])
  main_cli([*args, f"--workdir={tmp_path / 'straight'}"])
  resumed, straight = ([json.loads(line) for line in (tmp_path / name / "metrics.jsonl")
                        .read_text().splitlines()] for name in ("stopped", "straight"))
  assert [(r["kind"], r["step"]) for r in resumed] == [(r["kind"], r["step"]) for r in straight]
  for a, b in zip(resumed, straight):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert a["eval_accuracy"] == b["eval_accuracy"]
