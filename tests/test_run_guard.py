"""What a run survives: SIGTERM, a second run on its workdir, unusable workdirs, a full disk."""
import json
import os
import signal
import subprocess

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny

from test_resume import ARGS as RESUME_ARGS, _command as _resume_command, _final_params

# The resume test's run, checkpointing only at epoch ends and logging every 10 steps.
ARGS = [a for a in RESUME_ARGS if not a.startswith(("--checkpoint_every", "--log_every"))] + [
    "--checkpoint_every_steps=1000", "--log_every_steps=10"]


def _command(workdir):
  return _resume_command(workdir, ARGS)


def test_sigterm_saves_a_checkpoint_and_the_rerun_ends_bit_identical(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  subprocess.run(_command(straight), check=True, env=env, capture_output=True, timeout=600)
  process = subprocess.Popen(_command(stopped), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  for line in process.stdout:  # training is under way (step 10 logged)
    if line.startswith("step "):
      break
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGTERM, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jax_attn: stopped by SIGTERM at step "), err
  step = int(lines[0].split("at step ")[1].split(":")[0])
  assert 10 <= step < 128 and lines[0].endswith(
      "checkpoint saved; rerun the same command to resume")
  assert ocp.CheckpointManager(stopped / "checkpoints").latest_step() == step
  assert not (stopped / "run.lock").exists()
  rerun = subprocess.run(_command(stopped), env=env, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr
  assert f"resumed from the checkpoint at step {step}" in rerun.stdout
  step_a, leaves_a = _final_params(straight)
  step_b, leaves_b = _final_params(stopped)
  assert step_a == step_b == 128
  for a, b in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _error_line(result):
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jax_attn: error: "), result.stderr
  return lines[0]


def test_a_second_run_on_a_workdir_is_refused_and_a_dead_owner_is_taken_over(main_cli, tmp_path):
  args = [*tiny("vit"), "--max_steps=4", f"--workdir={tmp_path}"]
  main_cli(args)
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  (tmp_path / "run.lock").write_text(json.dumps(
      {"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-11-28 05:00:00"}))
  line = _error_line(main_cli([*args, "--max_steps=8"], check=False))
  assert f"is in use by pid {os.getpid()} on {os.uname().nodename} (since 2026-11-28" in line
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
  dead = subprocess.Popen(["true"])
  dead.wait()
  (tmp_path / "run.lock").write_text(json.dumps(
      {"pid": dead.pid, "host": os.uname().nodename, "started": "2026-11-28 05:00:00"}))
  out = main_cli([*args, "--max_steps=8"])
  assert f"taking over {tmp_path / 'run.lock'}: its run (pid {dead.pid}" in out.stdout
  assert not (tmp_path / "run.lock").exists()  # released at the end


@pytest.mark.parametrize("below, message", [
    ("", "is a file, not a directory"), ("sub", "cannot be created (Not a directory)")])
def test_unusable_workdir_is_one_line(main_cli, tmp_path, below, message):
  (tmp_path / "w").write_text("a file where the workdir should be")
  workdir = tmp_path / "w" / below if below else tmp_path / "w"
  line = _error_line(main_cli([*tiny("vit"), "--max_steps=2", f"--workdir={workdir}"],
                              check=False))
  assert message in line and str(workdir) in line


def test_full_disk_during_a_checkpoint_is_one_error_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
  """The write fails as on a full disk (ENOSPC) at the second checkpoint; a partial save's
  temporary directory is removed at the next start."""
  import tiny
  from jax_attn import configs
  from jax_attn.errors import UserError
  from jax_attn.train import loop as trainer
  config = tiny.get_config("vit")
  for path, value in {"data.synthetic": True, "image_size": 8, "data.synthetic_size": 256,
                      "batch_size": 16, "epochs": 1, "checkpoint_every_steps": 4,
                      "log_every_steps": 4}.items():
    configs.set_value(config, path, value)
  real_save = ocp.CheckpointManager.save
  calls = []

  def failing_save(self, step, *a, **k):
    calls.append(step)
    if len(calls) == 2:
      (tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-1").mkdir()
      raise OSError(28, "No space left on device")
    return real_save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(UserError, match=r"could not write the checkpoint at step 8 .*No space left "
                                      r"on device.*the checkpoints already there are intact"):
    trainer.train_and_evaluate(config, tmp_path)
  assert ocp.CheckpointManager(tmp_path / "checkpoints").all_steps() == [4]
  assert not (tmp_path / "run.lock").exists()
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  logs = []
  monkeypatch.setattr("jax_attn.train.metrics.MetricsWriter.log", lambda self, m: logs.append(m))
  summary = trainer.train_and_evaluate(config, tmp_path)
  assert summary["steps"] == 16 and any("left by a checkpoint save that did not" in m for m in logs)
  assert not list((tmp_path / "checkpoints").glob("*tmp*"))
