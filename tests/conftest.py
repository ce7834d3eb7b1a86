"""Shared test settings: small, deterministic and CPU-only."""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA compilation cache for the whole session: the pytest process, its xdist
# workers (they inherit the variable) and every `python -m jax_attn.main` they start. Most
# CLI tests compile the same tiny programs again in fresh processes; a warm cache cuts such a
# run from ~23 s to ~7 s. Keys cover the program, compile options, devices and XLA_FLAGS, so a
# hit is the same executable. A user's own JAX_COMPILATION_CACHE_DIR is honoured (and kept).
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jax_attn_test_xla_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# Tests compile hundreds of small programs and run each a few times: LLVM's optimisation passes
# cost more than they save (the fast loop takes 86 s with them off, 139 s with them on). XLA's
# graph passes (fusion, layouts, dtype handling) still run. Applies to the processes tests start.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
NO_COMPILATION_CACHE = {"JAX_ENABLE_COMPILATION_CACHE": "false"}  # for tests of fresh compiles

import subprocess
import sys

import pytest

TINY_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")
TINY = ["--synthetic", "--image_size=8", "--batch_size=16", "--synthetic_size=256",
        "--log_every_steps=4"]


def tiny(model="vit"):
  """Flags of a run of the tiny recipe (``tests/tiny.py``) on 8x8 synthetic data."""
  return [f"--config={TINY_RECIPE}:{model}", *TINY]


def run_main(args, *, env=None, timeout=300, check=True):
  """Runs ``python -m jax_attn.main ARGS`` in a fresh process; returns the CompletedProcess."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  result = subprocess.run([sys.executable, "-m", "jax_attn.main", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
  return result


@pytest.fixture
def main_cli():
  return run_main


def pytest_unconfigure(config):
  """The session's own cache goes with it (xdist workers leave it to the controller)."""
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
