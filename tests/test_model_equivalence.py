"""Every model of the shipped recipes (and a few variants) still initialises and computes what
the reference records: the parameter tree (paths, shapes, per-leaf sums, sums of squares and
first values), eval and train logits, gradients, batch statistics and sown attention weights.
The reference is ``tests/data/model_reference.npz``, written by
``tests/data/make_model_reference.py`` (which this test reuses to compute the current values).
"""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # full-size networks, compiled


@pytest.fixture(autouse=True, scope="module")
def optimized():
  """The reference was computed with XLA's default (optimised) code generation, which the
  conftest turns off: a few of its gradients grow to 1e39 and keep only the same rounding."""
  jax.clear_caches()
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", True)
  jax.clear_caches()

_GENERATOR = pathlib.Path(__file__).parent / "data" / "make_model_reference.py"
_spec = importlib.util.spec_from_file_location("make_model_reference", _GENERATOR)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

with np.load(reference.PATH) as _fixture:
  FIXTURE = dict(_fixture)
CASES = sorted({key.rsplit("/", 1)[0] for key in FIXTURE})


def assert_matches(case: str, got: dict) -> None:
  """``got`` (``reference.compute``'s output) against the stored values of ``case``."""
  want = {key[len(case) + 1:]: value for key, value in FIXTURE.items()
          if key.rsplit("/", 1)[0] == case}
  for tree in ("params", "grads", "state", "sown"):
    np.testing.assert_array_equal(got[f"{tree}_paths"], want[f"{tree}_paths"], err_msg=tree)
    np.testing.assert_array_equal(got[f"{tree}_shapes"], want[f"{tree}_shapes"], err_msg=tree)
  # Initial parameters: the same values (sums in float64 of float32 leaves).
  for stat in ("sum", "sumsq", "head"):
    np.testing.assert_allclose(got[f"params_{stat}"], want[f"params_{stat}"], rtol=1e-6,
                               atol=1e-9, err_msg=f"params_{stat}")
  for logits in ("eval_logits", "train_logits"):
    np.testing.assert_allclose(got[logits], want[logits], rtol=1e-5, atol=1e-5, err_msg=logits)
  for tree in ("grads", "state", "sown"):
    # A leaf's sum may nearly cancel (a key bias's gradient is zero up to rounding), so its
    # tolerance also scales with the leaf's norm and, far smaller, the whole tree's.
    sumsq = want[f"{tree}_sumsq"]
    error = np.abs(got[f"{tree}_sum"] - want[f"{tree}_sum"])
    bound = (1e-5 * (np.abs(want[f"{tree}_sum"]) + np.sqrt(sumsq))
             + 1e-7 * np.sqrt(sumsq.sum()) + 1e-12)
    bad = np.flatnonzero(~(error <= bound))
    assert not bad.size, f"{tree}_sum differs at {want[f'{tree}_paths'][bad]}: {error[bad]}"
    # Float32 results of a backward pass differ by a few 1e-5 between CPUs (the reduction order
    # of XLA's kernels depends on the instruction set: 3e-5 on one gradient leaf seen in CI).
    np.testing.assert_allclose(got[f"{tree}_sumsq"], want[f"{tree}_sumsq"], rtol=1e-4,
                               atol=1e-12, err_msg=f"{tree}_sumsq")


def test_fixture_covers_the_cases_it_was_made_for():
  assert CASES == sorted(reference.CASES)
  assert len(reference.encode(FIXTURE)) < 300_000


@pytest.mark.parametrize("case", CASES)
def test_model_matches_the_reference(case):
  name = case.split("/")[0]
  model = reference.model_from_config(name, str(FIXTURE[f"{case}/config"]))
  assert_matches(case, reference.compute(model, int(FIXTURE[f"{case}/size"])))
