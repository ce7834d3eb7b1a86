"""What a run survives: SIGTERM, a second run on its workdir, unusable workdirs, a full disk."""
import json
import os
import signal
import subprocess
import time

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("below, message", [
    ("", "is a file, not a directory"), ("sub", "cannot be created (Not a directory)")])
def test_unusable_workdir_is_one_line(main_cli, tmp_path, below, message):
  (tmp_path / "w").write_text("a file where the workdir should be")
  workdir = tmp_path / "w" / below if below else tmp_path / "w"
  line = _error_line(main_cli([*tiny("vit"), "--max_steps=2", f"--workdir={workdir}"],
                              check=False))
  assert message in line and str(workdir) in line


@pytest.mark.slow
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


@pytest.mark.parametrize("content", ["", '{"pid": 12', "[1, 2]"])
def test_an_empty_or_half_written_lock_is_stale_and_taken_over(tmp_path, content):
  """A lock nobody finished writing names no live run (its pid would be -1: ``os.kill(-1, 0)``
  succeeds, which would keep every later run out)."""
  from jax_attn.train.guard import WorkdirLock
  lock = tmp_path / "run.lock"
  lock.write_text(content)
  os.utime(lock, (time.time() - 60, time.time() - 60))  # written a minute ago
  logs = []
  held = WorkdirLock(tmp_path, logs.append)
  assert held.held and logs == [f"taking over {lock}: it is empty or half-written"]
  assert json.loads(lock.read_text())["pid"] == os.getpid()
  held.release()
  assert not lock.exists()


def test_a_lock_being_written_or_held_on_another_host_is_refused(tmp_path):
  from jax_attn.errors import UserError
  from jax_attn.train.guard import WorkdirLock
  lock = tmp_path / "run.lock"
  lock.write_text("")  # just made by a run starting now: not stale yet
  with pytest.raises(UserError, match=r"is in use by pid \(starting\)"):
    WorkdirLock(tmp_path, print)
  lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2026-12-01 10:00:00"}))
  with pytest.raises(UserError, match=r"in use by pid 1 on elsewhere \(since 2026-12-01 10:00:00\)"
                                      r".*\(a run on another host cannot be checked from here\)"):
    WorkdirLock(tmp_path, print)
  assert json.loads(lock.read_text())["host"] == "elsewhere"  # left as it was


def _lock(tmp_path, **owner):
  lock = tmp_path / "run.lock"
  lock.write_text(json.dumps({"host": os.uname().nodename, "started": "2026-11-28 05:00:00",
                              **owner}))
  return lock


def test_the_lock_names_its_owner_and_only_its_owner_removes_it(tmp_path):
  from jax_attn.train.guard import WorkdirLock
  before = time.strftime("%Y-%m-%d %H:%M:%S")
  held = WorkdirLock(tmp_path, print)
  lock = tmp_path / "run.lock"
  owner = json.loads(lock.read_text())
  assert held.held is True and (lock.stat().st_mode & 0o777) == 0o644 & ~_umask()
  assert owner == {"pid": os.getpid(), "host": os.uname().nodename, "started": owner["started"]}
  assert before <= owner["started"] <= time.strftime("%Y-%m-%d %H:%M:%S")
  _lock(tmp_path, pid=os.getpid() + 1)  # another run took it over meanwhile
  held.release()
  assert lock.exists() and held.held is False
  held.release()  # released twice: still not its lock to remove
  assert lock.exists()


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_a_live_owner_on_this_host_keeps_the_lock_and_a_dead_one_loses_it(tmp_path):
  from jax_attn.errors import UserError
  from jax_attn.train.guard import WorkdirLock
  lock = _lock(tmp_path, pid=os.getpid())
  with pytest.raises(UserError, match=rf"--workdir={tmp_path} is in use by pid {os.getpid()} on "
                     rf"{os.uname().nodename} \(since 2026-11-28 05:00:00\): wait for that run, "
                     rf"or remove {lock} if it is gone$"):
    WorkdirLock(tmp_path, print)
  dead = subprocess.Popen(["true"])
  dead.wait()
  _lock(tmp_path, pid=dead.pid)
  logs = []
  held = WorkdirLock(tmp_path, logs.append)
  assert held.held and logs == [
      f"taking over {lock}: its run (pid {dead.pid}, started 2026-11-28 05:00:00) is gone"]
  assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_lock_written_moments_ago_is_young_and_after_five_seconds_stale(tmp_path):
  from jax_attn.errors import UserError
  from jax_attn.train.guard import WorkdirLock
  lock = tmp_path / "run.lock"
  lock.write_text("")
  os.utime(lock, (time.time() - 4, time.time() - 4))
  with pytest.raises(UserError, match=rf"in use by pid \(starting\) on {os.uname().nodename} "
                                      r"\(since just now\)"):
    WorkdirLock(tmp_path, print)
  os.utime(lock, (time.time() - 5.5, time.time() - 5.5))
  assert WorkdirLock(tmp_path, print).held


def test_a_lock_that_cannot_be_written_is_one_error(tmp_path, monkeypatch):
  from jax_attn.errors import UserError
  from jax_attn.train import guard

  def refuse(*args):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(guard.os, "open", refuse)
  with pytest.raises(UserError, match=rf"^cannot write {tmp_path / 'run.lock'} \(Permission "
                                      r"denied\): use a writable --workdir$"):
    guard.WorkdirLock(tmp_path, print)


@pytest.mark.parametrize("pid, alive", [
    (None, False), ("12", False), (0, False), (-1, False), ("own", True)])
def test_alive_asks_only_about_one_positive_pid(pid, alive):
  from jax_attn.train.guard import _alive
  assert _alive(os.getpid() if pid == "own" else pid) is alive


def test_alive_counts_a_process_of_another_user_and_not_a_finished_one(monkeypatch):
  from jax_attn.train import guard
  dead = subprocess.Popen(["true"])
  dead.wait()
  assert guard._alive(dead.pid) is False

  def other_users(pid, sig):
    raise PermissionError(1, "Operation not permitted")

  monkeypatch.setattr(guard.os, "kill", other_users)
  assert guard._alive(1) is True


def test_prepare_workdir_makes_it_or_says_why_not(tmp_path, monkeypatch):
  from jax_attn.errors import UserError
  from jax_attn.train.guard import prepare_workdir
  prepare_workdir(tmp_path / "a" / "b")
  assert (tmp_path / "a" / "b").is_dir()
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match=rf"^--workdir={tmp_path / 'file'} is a file, not a "
                                      r"directory: use another --workdir$"):
    prepare_workdir(tmp_path / "file")
  with pytest.raises(UserError, match=rf"^--workdir={tmp_path / 'file' / 'x'} cannot be created "
                                      r"\(Not a directory\): use a directory you can write to$"):
    prepare_workdir(tmp_path / "file" / "x")
  asked = []
  monkeypatch.setattr(os, "access", lambda path, mode: asked.append(mode) or False)
  with pytest.raises(UserError, match=r"is not writable: use a directory you can write to$"):
    prepare_workdir(tmp_path / "a")
  assert asked == [os.W_OK | os.X_OK]


def test_partial_checkpoints_are_removed_and_whole_ones_kept(tmp_path):
  from jax_attn.train.guard import remove_partial_checkpoints
  for name in ("4", "8.orbax-checkpoint-tmp-17", "12.orbax-checkpoint-tmp-3"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "data").write_text("x")
  logs = []
  remove_partial_checkpoints(tmp_path, logs.append)
  assert [p.name for p in tmp_path.iterdir()] == ["4"]
  assert logs == [f"removed {tmp_path / name}, left by a checkpoint save that did not finish"
                  for name in ("12.orbax-checkpoint-tmp-3", "8.orbax-checkpoint-tmp-17")]
  remove_partial_checkpoints(tmp_path / "missing", logs.append)  # no directory: nothing to do
  assert len(logs) == 2


def test_stop_signals_ask_once_then_a_second_sigint_interrupts_and_handlers_come_back():
  from jax_attn.train.guard import STOP_EXIT_CODES, StopSignals, StoppedBySignal
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  with StopSignals() as stop:
    assert stop.agreed() is None
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested == stop.agreed() == "SIGTERM"
    os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM: still a request
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert {sig: signal.getsignal(sig) for sig in before} == before
  with StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.agreed() == "SIGINT"
  stopped = StoppedBySignal("SIGINT", 12)
  assert stopped.exit_code == STOP_EXIT_CODES["SIGINT"] == 130 and STOP_EXIT_CODES["SIGTERM"] == 143
  assert str(stopped) == ("stopped by SIGINT at step 12: checkpoint saved; rerun the same command "
                          "to resume")


def test_other_processes_neither_take_nor_release_the_lock(tmp_path, monkeypatch):
  """Process 0 of a multi-host run may have the same pid as process 1 on another host."""
  import jax
  from jax_attn.train.guard import WorkdirLock
  lock = _lock(tmp_path, pid=os.getpid())
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  other = WorkdirLock(tmp_path, print)
  other.release()
  assert other.held is False and json.loads(lock.read_text())["pid"] == os.getpid()


def test_an_unreadable_lock_that_vanishes_before_its_age_is_read_is_stale(tmp_path, monkeypatch):
  import pathlib
  from jax_attn.train.guard import WorkdirLock
  held = WorkdirLock(tmp_path, print)
  (tmp_path / "run.lock").write_text("{")
  stat = pathlib.Path.stat
  monkeypatch.setattr(pathlib.Path, "stat", lambda self, **kw: (
      (_ for _ in ()).throw(FileNotFoundError(self)) if self.name == "run.lock"
      else stat(self, **kw)))
  assert held._holder() is None


def test_partial_checkpoints_are_left_to_the_main_process(tmp_path, monkeypatch):
  import jax
  from jax_attn.train.guard import remove_partial_checkpoints
  (tmp_path / "8.orbax-checkpoint-tmp-17").mkdir()
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  remove_partial_checkpoints(tmp_path, print)
  assert (tmp_path / "8.orbax-checkpoint-tmp-17").is_dir()


@pytest.mark.parametrize("mine, others, agreed", [
    (None, [0, 0], None), (None, [0, 1], "SIGTERM"), ("SIGTERM", [0, 0], "SIGTERM"),
    (None, [2, 0], "SIGINT"), ("SIGTERM", [0, 2], "SIGINT"), ("SIGINT", [1, 0], "SIGINT")])
def test_with_several_processes_every_one_stops_for_any_ones_signal(monkeypatch, mine, others,
                                                                   agreed):
  import jax
  from jax.experimental import multihost_utils
  from jax_attn.train.guard import StopSignals
  sent = []
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: sent.append(x) or np.array([x, *others], np.int32))
  stop = StopSignals()
  stop.requested = mine
  assert stop.agreed() == agreed
  assert sent == [{None: 0, "SIGTERM": 1, "SIGINT": 2}[mine]] and sent[0].dtype == np.int32
