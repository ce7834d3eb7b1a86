"""Real separate processes joined by jax.distributed (gloo on CPU), through launch.sh."""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

LAUNCH = str(Path(__file__).resolve().parents[1] / "launch.sh")
from conftest import TINY_RECIPE

pytestmark = pytest.mark.slow  # starts processes or trains

ARGS = [f"--config={TINY_RECIPE}:vit", "--synthetic", "--image_size=8", "--batch_size=16",
        "--synthetic_size=256", "--max_steps=10", "--config.model.dropout_rate=0.0",
        "--augment_crop_padding=2", "--augment_flip",
        # SGD, not Adam: the key bias's true gradient is exactly 0 (softmax ignores it), so
        # Adam turns the rounding noise of different all-reduce orders into lr-sized steps.
        "--optimizer=sgd", "--learning_rate=0.05"]
ENV = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")


def _params(workdir, step=10):
  manager = ocp.CheckpointManager(workdir / "checkpoints")
  assert manager.latest_step() == step
  return jax.tree.leaves(manager.restore(step)["state"]["params"])


def test_two_processes_match_one_process(tmp_path):
  """Two processes of 2 devices each train 6 steps with pmap, and a second launch restores in
  both and goes on to step 10 with shard_map: the params of one process with 4 devices."""
  two, one = tmp_path / "two", tmp_path / "one"
  for max_steps, mode in ((6, "pmap"), (10, "shard_map")):
    result = subprocess.run(
        [LAUNCH, "--num_processes=2", "--", *ARGS, "--num_cpu_devices=2", f"--parallel={mode}",
         f"--max_steps={max_steps}", f"--workdir={two}"], env=ENV, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[p0]" in result.stdout and "4 cpu device(s)" in result.stdout
    assert f"--parallel={mode}" in result.stdout
    assert "[p1] vit/tiny" not in result.stdout  # only process 0 reports
  assert "[p0] resumed from the checkpoint at step 6" in result.stdout
  subprocess.run([sys.executable, "-m", "jax_attn.main", *ARGS, "--num_cpu_devices=4",
                  "--parallel=pmap", f"--workdir={one}"], env=ENV, check=True,
                 capture_output=True, timeout=300)
  for a, b in zip(_params(two), _params(one), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


class _Launch:
  """``launch.sh`` with its output read by a thread, so every wait has a deadline: a hung
  launch fails its test instead of stalling the suite."""

  def __init__(self, args):
    self.process = subprocess.Popen([LAUNCH, "--num_processes=2", "--", *args], env=ENV,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines: queue.Queue = queue.Queue()
    self.seen: list[str] = []
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.put(line)
    self.lines.put(None)

  def wait_for(self, prefix, seconds=300):
    """Worker pids, once a line starting with ``prefix`` has appeared."""
    deadline = time.time() + seconds
    while time.time() < deadline:
      try:
        line = self.lines.get(timeout=max(deadline - time.time(), 0.01))
      except queue.Empty:
        break
      if line is None:
        break
      self.seen.append(line)
      if line.startswith(prefix):
        return {int(m[1]): int(m[2]) for m in
                (re.match(r"\[launch\] process (\d): pid (\d+)", l) for l in self.seen) if m}
    self.process.kill()
    pytest.fail(f"no line starting with {prefix!r} within {seconds} s:\n{''.join(self.seen)[-3000:]}")

  def finish(self, seconds=120):
    """The launch's exit code and the rest of its output, within ``seconds``."""
    try:
      self.process.wait(timeout=seconds)
    finally:
      self.process.kill()
    rest = []
    while (line := self.lines.get(timeout=10)) is not None:
      rest.append(line)
    return self.process.returncode, "".join(rest)


def test_killed_worker_stops_the_launch(tmp_path):
  args = [a for a in ARGS if not a.startswith("--max_steps")]
  launch = _Launch([*args, "--epochs=1000", "--num_cpu_devices=2", "--parallel=pmap",
                    f"--workdir={tmp_path}"])
  pids = launch.wait_for("[p0] step")  # training is under way in both processes
  os.kill(pids[1], signal.SIGKILL)
  start = time.time()
  code, rest = launch.finish(seconds=60)
  assert time.time() - start < 60
  assert code != 0
  assert "process 1 exited with code -9; stopping the others" in rest
  time.sleep(0.5)
  assert not _alive(pids[0]) and not _alive(pids[1])  # no orphans


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """Process 1 alone gets SIGTERM; the all-gather at the next log step stops both there, with
  one checkpoint at that step, and the same launch resumes from it to the parameters of a
  launch that was never stopped."""
  common = [a for a in ARGS if not a.startswith("--max_steps")] + [
      "--max_steps=120", "--log_every_steps=5", "--checkpoint_every_steps=1000",
      "--num_cpu_devices=2", "--parallel=shard_map"]
  args = [*common, f"--workdir={tmp_path / 'stopped'}"]
  launch = _Launch(args)
  pids = launch.wait_for("[p0] step")
  os.kill(pids[1], signal.SIGTERM)
  code, rest = launch.finish()
  stops = re.findall(r"\[p(\d)\] jax_attn: stopped by SIGTERM at step (\d+)", rest)
  assert code == 143, rest[-3000:]
  assert {p for p, _ in stops} == {"0", "1"} and len({s for _, s in stops}) == 1, stops
  step = int(stops[0][1])
  assert step % 5 == 0 and 0 < step < 120
  checkpoints = tmp_path / "stopped" / "checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [step]
  resumed = _Launch(args)
  resumed.wait_for(f"[p0] resumed from the checkpoint at step {step}")
  code, rest = resumed.finish(seconds=300)
  assert code == 0, rest[-3000:]
  straight = _Launch([*common, f"--workdir={tmp_path / 'straight'}"])
  code, rest = straight.finish(seconds=300)
  assert code == 0, rest[-3000:]
  for a, b in zip(_params(tmp_path / "stopped", 120), _params(tmp_path / "straight", 120),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


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
