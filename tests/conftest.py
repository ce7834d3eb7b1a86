"""Shared test settings: small, deterministic and CPU-only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import subprocess
import sys

import pytest

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
