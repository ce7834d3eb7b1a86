"""--steps_per_call=K: the same batches in the same order as K=1, the same results, exact resume."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jax_attn import data
from jax_attn.data import pipeline as input_pipeline
from jax_attn.train import multistep

from conftest import TINY_RECIPE

ARGS = [f"--config={TINY_RECIPE}:vit", "--synthetic", "--image_size=16", "--batch_size=16",
        "--synthetic_size=600", "--epochs=2", "--checkpoint_every_steps=12",
        "--log_every_steps=5", "--augment_crop_padding=2", "--augment_flip",
        "--config.model.dropout_rate=0.1"]


def _train(workdir, *extra, env=None):
  result = subprocess.run([sys.executable, "-m", "jax_attn.main", *ARGS, *extra,
                           f"--workdir={workdir}"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})))
  assert result.returncode == 0, result.stderr
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return json.loads((workdir / "summary.json").read_text()), records, result.stdout


def _params(workdir):
  manager = ocp.CheckpointManager(workdir / "checkpoints")
  return [np.asarray(x) for x in jax.tree.leaves(manager.restore(manager.latest_step())["state"])]


def test_call_ends_at_every_boundary():
  end = lambda step: multistep.call_end(step, steps_per_call=10, steps_per_epoch=33,  # noqa: E731
                                        end_step=70, every=(15, 25))
  starts, step = [], 0
  while step < 70:
    starts.append(step)
    step = end(step)
  # multiples of 10, of 15 and 25 (log, checkpoint), epoch ends 33/66, the end 70
  assert starts == [0, 10, 15, 20, 25, 30, 33, 40, 45, 50, 60, 66]


def test_blocks_hold_the_batches_of_the_host_pipeline():
  split = data.SyntheticSource(200, 4).load("train")
  ends = lambda step: multistep.call_end(step, steps_per_call=4, steps_per_epoch=12,  # noqa: E731
                                         end_step=24, every=(5,))
  for epoch, first in ((0, 0), (1, 3)):  # also from the middle of an epoch (a resume)
    blocks = list(multistep.train_blocks(len(split), seed=3, epoch=epoch, global_batch=16,
                                         first_step=first, steps_per_call=4, ends=ends))
    host = list(input_pipeline.train_batches(split, seed=3, epoch=epoch, global_batch=16,
                                             first_step=first))
    columns = [(block["index"][:, i], block["position"][:, i])
               for steps, block in blocks for i in range(steps)]
    assert all(block["index"].shape == (16, 4) for _, block in blocks)
    assert all(block["valid"][0].sum() == steps for steps, block in blocks)
    assert len(columns) == len(host) == 12 - first
    for (index, position), batch in zip(columns, host):
      np.testing.assert_array_equal(index, batch["index"])
      np.testing.assert_array_equal(position, batch["position"])
  eval_split = data.SyntheticSource(200, 4).load("test")  # 40 examples: the last batch padded
  block = multistep.eval_block(len(eval_split), 16)
  batches = list(input_pipeline.eval_batches(eval_split, 16))
  assert block["index"].shape == (16, len(batches))
  for i, batch in enumerate(batches):
    np.testing.assert_array_equal(block["mask"][:, i], batch["mask"])
    np.testing.assert_array_equal(eval_split.images[block["index"][:, i]], batch["image"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """Uninterrupted runs with K = 1 and K = 10 (shared: each costs a compile)."""
  root = tmp_path_factory.mktemp("straight")
  return {"k1": (root / "k1", *_train(root / "k1")),
          "k10": (root / "k10", *_train(root / "k10", "--steps_per_call=10"))}


@pytest.mark.slow
def test_steps_per_call_trains_and_evaluates_like_one_step_per_call(straight):
  (_, one, one_records, one_log), (_, ten, ten_records, ten_log) = straight["k1"], straight["k10"]
  assert "note: --steps_per_call=10 on a CPU" in ten_log and "note:" not in one_log
  assert one["steps"] == ten["steps"] == 2 * (600 // 16)
  assert abs(ten["eval_loss"] - one["eval_loss"]) <= 1e-5 * abs(one["eval_loss"])
  assert ten["eval_accuracy"] == one["eval_accuracy"]
  assert [r["step"] for r in ten_records] == [r["step"] for r in one_records]
  for a, b in zip(one_records, ten_records):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_resumed_steps_per_call_run_is_bit_identical(tmp_path, straight):
  resumed = tmp_path / "resumed"
  _train(resumed, "--steps_per_call=10", "--max_steps=24")  # stops at a checkpoint, mid-epoch
  summary, *_ = _train(resumed, "--steps_per_call=10")
  assert summary["steps"] == 2 * (600 // 16)
  for a, b in zip(_params(straight["k10"][0]), _params(resumed)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
def test_steps_per_call_on_eight_devices(tmp_path, straight, mode):
  """Resident data replicated, the blocks split like batches: the run of one device (dropout
  masks and batch positions come from the global batch), with Adam (the notebook recipe's
  optimizer) and dropout on: 1 vs 8 devices, eval loss within 1e-4 relative."""
  flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  one = straight["k1"][1]
  eight, *_ = _train(tmp_path / mode, f"--parallel={mode}", "--steps_per_call=5", env=flags)
  assert eight["devices"] == 8 and eight["steps"] == one["steps"]
  assert abs(eight["eval_loss"] - one["eval_loss"]) <= 1e-4 * abs(one["eval_loss"])


def test_per_step_unstacks_the_rows_a_call_ran():
  single = {"loss": np.float32(2.0), "accuracy": np.float32(0.5)}
  call = {"loss": np.array([1.0, 0.9, 0.0], np.float32), "accuracy": np.array([0.1, 0.2, 0.0]),
          "steps": np.int32(2)}  # the third row is an unused column of the block
  steps, values = multistep.per_step([5, 7], [single, call])
  assert steps == [5, 6, 7]
  assert [float(v["loss"]) for v in values] == [2.0, 1.0, pytest.approx(0.9)]
  assert all(set(v) == {"loss", "accuracy"} for v in values)


def test_blocks_stop_where_the_run_ends_inside_an_epoch():
  ends = lambda step: multistep.call_end(step, steps_per_call=4, steps_per_epoch=12,  # noqa: E731
                                         end_step=6, every=(100,))
  blocks = list(multistep.train_blocks(200, seed=0, epoch=0, global_batch=16, first_step=0,
                                       steps_per_call=4, ends=ends))
  assert [steps for steps, _ in blocks] == [4, 2]
