"""The benchmark's PyTorch side (the notebook's loop, airbench93's network and whole-run
recipe) and its table."""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jax_attn import configs, data
from jax_attn.data import augment
from jax_attn.tools import bench

ROOT = Path(__file__).resolve().parents[1]

torch = pytest.importorskip("torch")
from jax_attn.tools.torch_bench import TorchSide  # noqa: E402  (needs torch)
from jax_attn.tools.torch_models import TorchAirbench93  # noqa: E402


def test_torch_side_trains_on_the_visible_device():
  split = data.SyntheticSource(size=32, image_size=32).load("train")
  side = TorchSide("vit", "notebook", batch_size=8, image_size=32, split=split)
  expected = "cuda" if torch.cuda.is_available() else "cpu"
  assert side.device.type == expected
  assert {p.device.type for p in side.model.parameters()} == {expected}
  before = [p.detach().cpu().clone() for p in side.model.parameters()]
  times = side.train_steps(2)
  assert len(times) == 2 and all(t > 0 for t in times)
  assert any(not torch.equal(b, p.detach().cpu()) for b, p in zip(before, side.model.parameters()))
  assert len(side.eval_steps(3)) == 3
  assert side.epoch(16) > 0  # two batches through the notebook's DataLoader


def test_airbench93_is_airbench93s_network_and_races_the_airbench_recipes():
  """Whitening to 24 channels, groups of 64/128/128, a 10-way head: 569,656 weights as the
  public network has them (its frozen whitening filters and batch-norm scales included)."""
  net = TorchAirbench93()
  assert sum(p.numel() for p in net.parameters()) == 569_656
  assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
  assert [n for n, p in net.named_parameters() if not p.requires_grad] == [
      "whiten.weight", *[f"groups.{g}.norm{i}.weight" for g in range(3) for i in (1, 2)]]
  split = data.SyntheticSource(size=32, image_size=32).load("train")
  side = TorchSide("sa_cnn", "airbench_noattn", batch_size=8, image_size=32, split=split)
  assert isinstance(side.model, TorchAirbench93) and len(side.train_steps(1)) == 1
  with pytest.raises(ValueError, match="no PyTorch rival for vit/conv_tokens"):
    TorchSide("vit", "conv_tokens", batch_size=8, image_size=32, split=split)


def test_table_names_the_torch_device():
  row = {"model": "vit", "compile_s": 1.0, "train_step_ms": 2.0, "torch_device": "cuda",
         "torch_train_step_ms": 6.0, "speedup_train": 3.0}
  lines = bench._table([row]).splitlines()
  assert "torch_device" in lines[0].split() and "cuda" in lines[1].split()
  assert "3.00x" in lines[1].split()
  assert "mfu" not in lines[0]  # columns no result has are left out
  np.testing.assert_equal(len(lines), 2)


@pytest.mark.slow
def test_bench_races_eager_and_compiled_torch_with_steps_per_call():
  """The whole benchmark on a tiny model: JAX side (K=2 steps per call), FLOP count, and the
  ratios against eager PyTorch and torch.compile, measured in the same run."""
  import json
  import os
  import subprocess
  import sys
  result = subprocess.run(
      [sys.executable, "-m", "jax_attn.tools.bench", "--models=sa_cnn", "--recipe=notebook",
       "--image_size=16", "--batch_size=4", "--steps=2", "--rounds=1", "--steps_per_call=2",
       "--against=torch,torch_compile", "--json"],
      capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-2000:]
  (row,) = json.loads(result.stdout[result.stdout.index("["):])
  assert row["steps_per_call"] == 2 and row["gflops_per_image"] > 0
  assert "torch_compile_error" not in row, row
  assert row["torch_train_step_ms"] > 0 and row["torch_compile_train_step_ms"] > 0
  assert row["speedup_train"] > 0 and row["speedup_train_compile"] > 0


def test_race_takes_turns_and_reports_each_sides_median():
  """The sides alternate round by round after a warm-up, and each gets its own median: a
  speed-up from them is a ratio of one run's medians."""
  calls, times = [], {"jax": iter([9, 9, 1, 2, 3, 4]), "torch": iter([9, 9, 5, 7, 6, 20])}

  def timer(name):
    def time_steps(n):
      calls.append((name, n))
      return [next(times[name]) for _ in range(n)]
    return time_steps

  medians = bench.race({"jax": timer("jax"), "torch": timer("torch")}, steps=4, rounds=2)
  assert calls == [("jax", 2), ("torch", 2), ("jax", 2), ("torch", 2), ("jax", 2), ("torch", 2)]
  assert medians == {"jax": 2.5, "torch": 6.5}  # the warm-up's 9s left out


@pytest.mark.slow
def test_bench_refuses_an_unknown_rival():
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "-m", "jax_attn.tools.bench", "--against=tensorflow"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "--against takes a list of torch, torch_compile" in result.stderr


def test_profile_table_sums_device_kernels_by_kind(tmp_path, capsys):
  """A GPU-shaped Perfetto trace: only the device's kernels count, grouped by kind."""
  import gzip
  import json
  from jax_attn.tools import profile_table
  events = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7, "args": {"name": "Stream #13(Compute)"}},
      {"ph": "M", "name": "thread_name", "pid": 2, "tid": 8, "args": {"name": "XLA Ops"}},
      {"ph": "X", "pid": 2, "tid": 8, "name": "convolution.3", "dur": 3000.0},  # derived track
      {"ph": "X", "pid": 2, "tid": 7, "name": "loop_convert_fusion", "dur": 1000.0},
      {"ph": "X", "pid": 1, "name": "PjitFunction(jit(body))", "dur": 9000.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "sm90_xmma_gemm_bf16", "dur": 3000.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "cudnn_conv_fprop", "dur": 1500.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "cudnn_conv_fprop", "dur": 1500.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "loop_multiply_fusion", "dur": 3000.0}]
  times = profile_table.kernel_times({"traceEvents": events})
  assert times == {"sm90_xmma_gemm_bf16": 3000.0, "cudnn_conv_fprop": 3000.0,
                   "loop_multiply_fusion": 3000.0, "loop_convert_fusion": 1000.0}
  text = profile_table.table(times, steps=2)
  assert "| fused elementwise | 2.000 | 40.0% |" in text  # a convert is not a convolution
  assert "| convolution | 1.500 | 30.0% |" in text and "| matmul | 1.500 | 30.0% |" in text
  assert "| **total** | **5.000** | 100% |" in text
  trace_dir = tmp_path / "sa_cnn" / "plugins" / "profile" / "run"
  trace_dir.mkdir(parents=True)
  with gzip.open(trace_dir / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  assert profile_table.main(["profile_table", str(tmp_path), "--steps=2"]) == 0
  (tmp_path / "sa_cnn" / "steps.txt").write_text("4\n")  # as bench --profile writes it
  assert profile_table.main(["profile_table", str(tmp_path)]) == 0
  assert "### sa_cnn (4 steps traced)" in capsys.readouterr().out
  assert profile_table.main(["profile_table", str(tmp_path / "sa_cnn" / "plugins" / "profile" / "run" / "x")]) == 2


def test_torch_airbench_crops_the_windows_the_jax_side_crops():
  from jax_attn.tools import torch_airbench
  images = np.random.default_rng(0).integers(0, 256, (600, 6, 6, 3)).astype(np.uint8)
  x = torch_airbench._nchw(augment.normalize(images, "mean_std"))
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
  crops = nhwc(torch_airbench._crop(x, 1, torch.Generator().manual_seed(0)))
  windows = [augment.translate(nhwc(x), dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  seen = [[k for k, w in enumerate(windows) if np.array_equal(w[i], crops[i])] for i in range(600)]
  assert all(len(k) == 1 for k in seen)  # each crop is one window of the padded image
  counts = np.bincount([k[0] for k in seen], minlength=9)
  assert counts.min() > 30, counts  # each of the 9 windows: 600 / 9 = 67 expected


@pytest.mark.slow  # trains
def test_torch_airbench_trains_repeatably_and_learns():
  from jax_attn.tools import torch_airbench
  config = configs.get_recipe("sa_cnn", "airbench_noattn", epochs=3, batch_size=32)
  train, evaluation = (data.SyntheticSource(256, 32).load(s) for s in ("train", "test"))
  run = lambda seed: torch_airbench.train_and_evaluate(  # noqa: E731
      config, train, evaluation, seed, log=lambda _: None)
  first, again, other = run(0), run(0), run(1)
  assert first["history"] == again["history"] and first["history"] != other["history"]
  assert first["steps"] == 24 and first["images_per_s"] > 0
  assert first["history"][-1]["loss"] < 0.8 * first["history"][0]["loss"]  # it learns


@pytest.mark.slow  # starts processes
def test_whole_run_race_script_records_both_frameworks(tmp_path):
  env = dict(os.environ, DATA_FLAGS="--synthetic --synthetic_size=256",
             EXTRA_FLAGS="--epochs=1 --batch_size=32")
  script = ROOT / "experiments" / "cpu_whole_run_race.sh"
  subprocess.run(["bash", str(script), str(tmp_path), "1"], cwd=ROOT, env=env, check=True,
                 capture_output=True, timeout=600)
  runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
  assert [r["framework"] for r in runs] == ["jax", "pytorch"]
  assert all(r["wall_s"] >= 0 and 0 <= r["eval_accuracy"] <= 1 for r in runs), runs
