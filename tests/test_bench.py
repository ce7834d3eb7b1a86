"""The benchmark's PyTorch side (the notebook's loop) and its table."""
import numpy as np
import pytest

from jax_attn import bench, data

torch = pytest.importorskip("torch")
from jax_attn.torch_bench import TorchSide  # noqa: E402  (needs torch)


def test_torch_side_trains_on_the_visible_device():
  split = data.SyntheticSource(size=32, image_size=32).load("train")
  side = TorchSide("vit", batch_size=8, image_size=32, split=split)
  expected = "cuda" if torch.cuda.is_available() else "cpu"
  assert side.device.type == expected
  assert {p.device.type for p in side.model.parameters()} == {expected}
  before = [p.detach().cpu().clone() for p in side.model.parameters()]
  times = side.train_steps(2)
  assert len(times) == 2 and all(t > 0 for t in times)
  assert any(not torch.equal(b, p.detach().cpu()) for b, p in zip(before, side.model.parameters()))
  assert len(side.eval_steps(3)) == 3
  assert side.epoch(16) > 0  # two batches through the notebook's DataLoader


def test_table_names_the_torch_device():
  row = {"model": "vit", "compile_s": 1.0, "train_step_ms": 2.0, "torch_device": "cuda",
         "torch_train_step_ms": 6.0, "speedup_train": 3.0}
  lines = bench._table([row]).splitlines()
  assert "torch_device" in lines[0].split() and "cuda" in lines[1].split()
  assert "3.00x" in lines[1].split()
  assert "mfu" not in lines[0]  # columns no result has are left out
  np.testing.assert_equal(len(lines), 2)
