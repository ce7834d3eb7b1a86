"""Orbax checkpoints of the train state, and the workdir's config guard.

A checkpoint holds plain numpy trees (the state dict of the train state and the train meter's
sums), so it restores into any parallel layout, and without a template for inference.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from jax_attn import configs
from jax_attn.errors import UserError


def check_resumable(workdir: Path, config: Any, log: Callable[[str], None]) -> None:
  """Refuses a workdir whose config.json describes another architecture; logs the settings
  that changed."""
  path = workdir / "config.json"
  if not path.exists():
    return
  try:
    previous = configs.flatten(json.loads(path.read_text()))
  except (OSError, ValueError) as e:
    raise UserError(f"{path} is unreadable ({e}): move it away or use another --workdir") from None
  current = configs.flatten(configs.to_json(config))
  def differs(key: str) -> bool:  # key order is not a change: config.json is written sorted
    return json.dumps(previous.get(key), sort_keys=True) != json.dumps(current.get(key), sort_keys=True)

  clashes = [f"{k}: {previous.get(k)!r} -> {current.get(k)!r}"
             for k in configs.ARCHITECTURE_KEYS if differs(k)]
  if clashes:
    raise UserError(f"--workdir={workdir} holds a run of another architecture ({'; '.join(clashes)}):"
                    " use a new --workdir, or the original settings to resume")
  changed = sorted(k for k in set(previous) | set(current) if differs(k))
  if changed:
    log(f"resuming in {workdir} with changed settings: {', '.join(changed)}")


class Checkpointer:
  """Keeps the last ``keep`` checkpoints under ``directory``; restores the newest good one.
  ``read_only``: restore only, and leave unreadable checkpoints where they are."""

  def __init__(self, directory: Path, keep: int = 1, log: Callable[[str], None] = print,
               read_only: bool = False):
    self._log = log
    self._directory = directory.absolute()
    self._read_only = read_only
    self._manager = ocp.CheckpointManager(
        self._directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                              create=not read_only))

  def save(self, step: int, tree: Any) -> None:
    if step in self._manager.all_steps():
      return
    with self._write_errors(f"the checkpoint at step {step}"):
      self._manager.save(step, args=ocp.args.StandardSave(tree))

  @contextlib.contextmanager
  def _write_errors(self, what: str):
    """A failed write (full disk, lost permission) as one line; earlier checkpoints stay."""
    try:
      yield
    except (OSError, ValueError, RuntimeError) as e:
      reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
      raise UserError(f"could not write {what} to {self._directory} ({reason}): free space or "
                      "fix the disk, then rerun the same command; the checkpoints already "
                      "there are intact") from None

  def restore_latest(self, template: Any = None) -> tuple[int, Any] | None:
    """``(step, tree)`` of the newest checkpoint that restores (into ``template``'s structure,
    else as saved); older ones are tried, and said, if it is damaged."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    failures = []
    for step in steps:
      try:
        tree = self._manager.restore(step, args=ocp.args.StandardRestore(template))
      except Exception as e:  # a damaged checkpoint can fail in many ways
        failures.append(f"step {step} ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
        self._log(f"checkpoint at step {step} is unreadable; trying an older one")
        continue
      if failures and not self._read_only:
        self._set_aside(steps[:len(failures)])
        self._log(f"restored step {step}; the unreadable {failures} were moved to "
                  f"{self._directory.parent / 'unreadable_checkpoints'}")
      return step, tree
    if failures:
      raise UserError(f"no checkpoint in {self._manager.directory} can be restored "
                      f"({'; '.join(failures)}): repair them or use a new --workdir")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable checkpoints out of the way (never deletes them) so training can redo them."""
    if jax.process_index() == 0:
      target = self._directory.parent / "unreadable_checkpoints"
      target.mkdir(exist_ok=True)
      for step in steps:
        shutil.move(str(self._directory / str(step)), str(target / f"{step}-{int(time.time())}"))
    self._manager.reload()

  def close(self) -> None:
    with self._write_errors("the last checkpoint"):  # async saves report their errors here
      self._manager.wait_until_finished()
      self._manager.close()
