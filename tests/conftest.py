"""Shared test settings: small, deterministic and CPU-only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shutil
import subprocess
import sys
import tempfile

import pytest

# One persistent XLA compilation cache for the test session, shared by both xdist workers and
# every `python -m jax_attn.main` the tests start (they inherit the environment): the
# end-to-end tests compile the same small programs in many fresh processes (a straight run,
# a killed run, its resume...), and compiling is most of their time. A hit loads the same
# executable, so results stay bit-identical. The size cap turns on JAX's file lock (readers
# never see a half-written entry); the directory is made here, in the process that starts
# the workers, and removed when the session ends.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="jax_attn_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024 ** 3))


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)

TINY = ["--preset=tiny", "--synthetic", "--image_size=8", "--batch_size=16",
        "--synthetic_size=256", "--log_every_steps=4"]


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
