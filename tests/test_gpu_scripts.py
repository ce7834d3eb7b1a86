"""The device scripts' start: a project that does not import there stops the call at once."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts processes or trains

REPO = Path(__file__).resolve().parents[1]


def _python_without(tmp_path: Path, module: str) -> Path:
  """A python3 on which `import MODULE` fails, as on a device image that lacks the package."""
  hide = tmp_path / "hide" / module
  hide.mkdir(parents=True)
  (hide / "__init__.py").write_text(
      f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n")
  wrapper = tmp_path / "python"
  wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{hide.parent}:$PYTHONPATH" exec {sys.executable} "$@"\n')
  wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
  return wrapper


def test_a_missing_package_without_its_wheel_stops_the_call_with_one_line(tmp_path):
  # The scripts run from the repo root; this root holds the code but no carried .whl folder.
  root = tmp_path / "root"
  root.mkdir()
  for name in ("jax_attn", "experiments"):
    (root / name).symlink_to(REPO / name)
  out, runs = tmp_path / "out", tmp_path / "runs"
  env = dict(os.environ, PYTHON=str(_python_without(tmp_path, "ml_collections")),
             RUNS_DIR=str(runs), SMOKE="1")
  done = subprocess.run(["bash", "experiments/gpu_speed.sh", str(out), "60"], cwd=root, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 1, done.stdout + done.stderr
  errors = [line for line in done.stdout.splitlines() if "error:" in line]
  assert len(errors) == 1, done.stdout
  assert "No module named 'ml_collections'" in errors[0]
  assert "gpu_prepare.sh" in errors[0] and ".whl" in errors[0]
  assert errors[0] in (out / "session.log").read_text()  # the line comes back with the call
  assert not any(runs.iterdir())  # no run was started
  assert "A: the race" not in done.stdout
