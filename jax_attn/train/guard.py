"""What a run does about the world around it: one run per workdir, an unusable workdir, and
SIGTERM / SIGINT (preemption) ending in a checkpoint, and JAX's NaN checks kept on.

The lock is a file ``WORKDIR/run.lock`` holding the owner's pid, host and start time, made
with ``O_EXCL`` (atomic on POSIX file systems); a lock whose process is gone (same host) is
taken over. No library keeps a per-directory run lock with a stale-owner rule, hence this
module. Signals are handled by a flag the training loop reads after each step.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from jax_attn.errors import UserError

LOCK_NAME = "run.lock"
# Exit codes of a run stopped by a signal after saving its checkpoint (the shell's 128 + N).
STOP_EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


class StoppedBySignal(Exception):
  """The run saved a checkpoint at ``step`` and stopped because of ``signal_name``."""

  def __init__(self, signal_name: str, step: int):
    super().__init__(f"stopped by {signal_name} at step {step}: checkpoint saved; rerun the same "
                     "command to resume")
    self.exit_code = STOP_EXIT_CODES[signal_name]


def armed_nan_checks() -> contextlib.AbstractContextManager:
  """Keeps ``JAX_DEBUG_NANS`` / ``JAX_DEBUG_INFS``, when set, checking every compiled step.

  Works around a JAX bug (seen in 0.10.2): tracing an op that turns the check off for a moment
  (``jnp.var``, so any batch or layer norm) leaves this thread's compiled calls unchecked from
  then on, so a NaN in step 2 or later was never caught. Inside a thread-local
  ``jax.debug_nans(True)``, leaving such an op restores the check instead.
  """
  stack = contextlib.ExitStack()
  if jax.config.jax_debug_nans:
    stack.enter_context(jax.debug_nans(True))
  if jax.config.jax_debug_infs:
    stack.enter_context(jax.debug_infs(True))
  return stack


def prepare_workdir(workdir: Path) -> None:
  """Creates ``workdir`` or says in one line why it cannot be used."""
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir={workdir} is a file, not a directory: use another --workdir")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"--workdir={workdir} cannot be created ({e.strerror or e}): use a "
                    "directory you can write to") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f"--workdir={workdir} is not writable: use a directory you can write to")


def _alive(pid: object) -> bool:
  """Whether process ``pid`` of this host runs; not a positive pid (a lock left empty or
  half-written) is no process: ``os.kill(-1, 0)`` would ask about every process there is."""
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Held by process 0 for the whole run; ``release`` removes it (only if still its own)."""

  def __init__(self, workdir: Path, log: Callable[[str], None]):
    self.path = workdir / LOCK_NAME
    self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    self.held = False
    if jax.process_index() != 0:
      return
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is None or (holder.get("host") == self.owner["host"]
                              and not holder.get("starting") and not _alive(holder.get("pid"))):
          log(f"taking over {self.path}: " + ("it is empty or half-written" if holder is None
              else f"its run (pid {holder.get('pid')}, started {holder.get('started')}) is gone"))
          self.path.unlink(missing_ok=True)
          continue
        elsewhere = holder.get("host") != self.owner["host"]
        raise UserError(
            f"--workdir={self.path.parent} is in use by pid {holder.get('pid')} on "
            f"{holder.get('host')} (since {holder.get('started')}): wait for that run, or remove "
            f"{self.path} if it is gone" + (" (a run on another host cannot be checked from "
                                           "here)" if elsewhere else "")) from None
      except OSError as e:
        raise UserError(f"cannot write {self.path} ({e.strerror or e}): use a writable --workdir"
                        ) from None
      with os.fdopen(fd, "w") as f:
        json.dump(self.owner, f)
      self.held = True
      return

  def _holder(self) -> dict | None:
    """The lock's owner; None for a lock that is empty or half-written and older than a few
    seconds (stale: a run writes its lock as it makes it)."""
    try:
      holder = json.loads(self.path.read_text())
    except (OSError, ValueError):
      holder = None
    if isinstance(holder, dict):
      return holder
    try:
      young = time.time() - self.path.stat().st_mtime < 5
    except OSError:
      young = False
    return {"pid": "(starting)", "host": self.owner["host"], "started": "just now",
            "starting": True} if young else None

  def release(self) -> None:
    if self.held and (self._holder() or {}).get("pid") == self.owner["pid"]:
      self.path.unlink(missing_ok=True)
    self.held = False


def remove_partial_checkpoints(directory: Path, log: Callable[[str], None]) -> None:
  """Deletes temporary directories left by a checkpoint save that failed (orbax writes
  ``*.orbax-checkpoint-tmp*`` and renames it when complete): they hold no usable checkpoint."""
  if jax.process_index() != 0 or not directory.is_dir():
    return
  for partial in sorted(directory.glob("*.orbax-checkpoint-tmp*")):
    shutil.rmtree(partial, ignore_errors=True)
    log(f"removed {partial}, left by a checkpoint save that did not finish")


class StopSignals:
  """While active, the first SIGTERM or SIGINT asks the loop to stop after its step; a second
  SIGINT stops at once (KeyboardInterrupt)."""

  def __init__(self):
    self.requested: str | None = None
    self._previous: dict = {}

  def __enter__(self) -> "StopSignals":
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def agreed(self) -> str | None:
    """The signal every process stops for: with several processes, any one's request,
    shared through an all-gather so all stop at the same step."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    codes = multihost_utils.process_allgather(
        np.int32({None: 0, "SIGTERM": 1, "SIGINT": 2}[self.requested]))
    return {0: None, 1: "SIGTERM", 2: "SIGINT"}[int(np.max(codes))]

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
