"""Kill -9 after a checkpoint, rerun the same command: bit-identical final params."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest
import numpy as np
import orbax.checkpoint as ocp

from jax_attn.errors import UserError

from conftest import NO_COMPILATION_CACHE, TINY_RECIPE

pytestmark = pytest.mark.slow  # starts processes or trains

# Batch norm (running statistics in the checkpoint) and a warm-up + cosine schedule (the
# position in it restored from the step): the state a resume most easily gets wrong.
ARGS = [f"--config={TINY_RECIPE}:sa_cnn", "--synthetic", "--image_size=16", "--batch_size=16",
        "--synthetic_size=1024", "--epochs=2", "--checkpoint_every_steps=20",
        "--log_every_steps=20", "--augment_crop_padding=2", "--augment_flip",
        "--config.model.norm=batch", "--schedule=warmup_cosine", "--warmup_epochs=0.5"]


def _command(workdir, args=ARGS):
  return [sys.executable, "-m", "jax_attn.main", *args, f"--workdir={workdir}"]


def _final_params(workdir):
  manager = ocp.CheckpointManager(workdir / "checkpoints")
  step = manager.latest_step()
  return step, jax.tree.leaves(manager.restore(step)["state"])


def test_killed_run_resumes_bit_exact(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(_command(straight), check=True, env=env, capture_output=True, timeout=600)

  process = subprocess.Popen(_command(killed), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "40").is_dir() and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / "summary.json").exists(), "the run ended before it could be killed"
  # The rerun without the tests' compilation cache: it compiles afresh, as a user's rerun does,
  # and must still end on the bits of the straight run (which compiled first).
  rerun = subprocess.run(_command(killed), env={**env, **NO_COMPILATION_CACHE},
                         capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr
  assert "resumed from the checkpoint at step" in rerun.stdout

  config = json.loads((killed / "config.json").read_text())
  assert config["model"]["norm"] == "batch" and config["schedule"] == "warmup_cosine"
  step_a, leaves_a = _final_params(straight)
  step_b, leaves_b = _final_params(killed)
  assert step_a == step_b == 128
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  summary_a = json.loads((straight / "summary.json").read_text())
  summary_b = json.loads((killed / "summary.json").read_text())
  assert summary_a["eval_accuracy"] == summary_b["eval_accuracy"]
  steps = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(steps)  # records past the checkpoint were dropped, not duplicated


def test_resume_guard_reports_only_real_changes(tmp_path):
  """config.json is written with sorted keys; the in-memory config is in field order."""
  from jax_attn import configs
  from jax_attn.train.checkpoint import check_resumable
  from jax_attn.train.metrics import MetricsWriter

  config = configs.get_recipe("sa_cnn", "tuned")
  MetricsWriter(tmp_path).write_json("config.json", configs.to_json(config))
  logged = []
  check_resumable(tmp_path, config, logged.append)
  assert logged == []
  config.learning_rate, config.eval_flip = 0.5, False
  check_resumable(tmp_path, config, logged.append)
  assert logged == [f"resuming in {tmp_path} with changed settings: eval_flip, learning_rate"]
  config.model.widths = (64, 128, 120)
  with pytest.raises(UserError, match=r"holds a run of another architecture \(model: "):
    check_resumable(tmp_path, config, logged.append)
