"""Real separate processes joined by jax.distributed (gloo on CPU), through launch.sh."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

LAUNCH = str(Path(__file__).resolve().parents[1] / "launch.sh")
ARGS = ["--model=vit", "--preset=tiny", "--synthetic", "--image_size=8", "--batch_size=16",
        "--synthetic_size=256", "--max_steps=10", "--model_arg=dropout_rate=0.0",
        "--augment_crop_padding=2", "--augment_flip",
        # SGD, not Adam: the key bias's true gradient is exactly 0 (softmax ignores it), so
        # Adam turns the rounding noise of different all-reduce orders into lr-sized steps.
        "--optimizer=sgd", "--learning_rate=0.05"]
ENV = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")


def _params(workdir):
  manager = ocp.CheckpointManager(workdir / "checkpoints")
  assert manager.latest_step() == 10
  return jax.tree.leaves(manager.restore(10)["state"]["params"])


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_two_processes_match_one_process(tmp_path, mode):
  two, one = tmp_path / "two", tmp_path / "one"
  for max_steps in (6, 10):  # the second launch restores from all processes, then goes on
    result = subprocess.run(
        [LAUNCH, "--num_processes=2", "--", *ARGS, "--num_cpu_devices=2", f"--parallel={mode}",
         f"--max_steps={max_steps}", f"--workdir={two}"], env=ENV, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
  assert "[p0] resumed from the checkpoint at step 6" in result.stdout
  assert "[p0]" in result.stdout and "4 cpu device(s)" in result.stdout
  assert "[p1] vit (tiny)" not in result.stdout  # only process 0 reports
  subprocess.run([sys.executable, "-m", "jax_attn.main", *ARGS, "--num_cpu_devices=4",
                  f"--parallel={mode}", f"--workdir={one}"], env=ENV, check=True,
                 capture_output=True, timeout=300)
  for a, b in zip(_params(two), _params(one), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


def test_killed_worker_stops_the_launch(tmp_path):
  args = [a for a in ARGS if not a.startswith("--max_steps")]
  launcher = subprocess.Popen(
      [LAUNCH, "--num_processes=2", "--", *args, "--epochs=1000", "--num_cpu_devices=2",
       "--parallel=pmap", f"--workdir={tmp_path}"], env=ENV, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  pids, lines = {}, []
  for line in launcher.stdout:
    lines.append(line)
    match = re.match(r"\[launch\] process (\d): pid (\d+)", line)
    if match:
      pids[int(match[1])] = int(match[2])
    if line.startswith("[p0] step"):  # training is under way in both processes
      break
  os.kill(pids[1], signal.SIGKILL)
  start = time.time()
  try:
    rest, _ = launcher.communicate(timeout=60)
  finally:
    launcher.kill()
  assert time.time() - start < 60
  assert launcher.returncode != 0
  assert "process 1 exited with code -9; stopping the others" in rest
  time.sleep(0.5)
  assert not _alive(pids[0]) and not _alive(pids[1])  # no orphans


def test_launch_names_an_interpreter_without_jax_attn(tmp_path):
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\nexit 1\n")
  fake.chmod(0o755)
  result = subprocess.run([LAUNCH, "--", "--model=vit"], env=dict(ENV, PYTHON=str(fake)),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"launch.sh: error: {fake} cannot import jax and jax_attn: set PYTHON to the interpreter "
      "you installed them into (e.g. PYTHON=.venv/bin/python ./launch.sh ...)"]
