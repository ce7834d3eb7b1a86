"""Benchmark: step time, throughput, FLOPs and memory; optionally raced against PyTorch.

    python -m jax_attn.tools.bench --models=sa_cnn,vit [--recipe=notebook]
        [--against=torch,torch_compile] [--steps_per_call=K] [--e2e_examples=2048] [--json]

Each model is built and trained as its packaged ``--recipe`` says (network, optimizer, label
smoothing, lookahead; the images only normalised). JAX and PyTorch steps are timed alternately
in the same run; the headline is the speed-up ``torch step time / jax step time`` (absolute
times are noise on shared machines), against eager PyTorch and ``torch.compile`` of the same
model (``torch_bench.RIVALS``: the notebook's networks, airbench93's for the airbench recipes).
FLOPs come from XLA's cost analysis of one compiled train step of the einsum attention (XLA
counts a loop body once and does not see inside kernels it calls).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from absl import app, flags

from jax_attn import configs, data, models
from jax_attn.configs.default import SETTING
from jax_attn.data import pipeline
from jax_attn.train import multistep, optim
from jax_attn.train.parallel import AXIS, Parallel
from jax_attn.train.state import Lookahead, create_state
from jax_attn.train.steps import make_eval_body, make_train_body

_MODELS = flags.DEFINE_list("models", ["sa_cnn", "vit"], "Models to benchmark.")
_RECIPE = flags.DEFINE_string("recipe", "notebook", "Packaged recipe of every model.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_IMAGE = flags.DEFINE_integer("image_size", 32, "Image side (synthetic images).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per framework (median reported).")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Alternations between JAX and torch.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", SETTING["dtype"].choices, "JAX compute dtype.")
_IMPL = flags.DEFINE_enum("attention_impl", "einsum", SETTING["attention_impl"].choices,
                          "JAX attention path.")
_PARALLEL = flags.DEFINE_enum("parallel", "none", SETTING["parallel"].choices,
                              "JAX data parallelism.")
_CPU_KERNELS = flags.DEFINE_enum("cpu_kernels", "ynnpack", SETTING["cpu_kernels"].choices,
                                 "XLA:CPU dot/conv kernels (CPU backend only).")
RIVALS = ("torch", "torch_compile")
_AGAINST = flags.DEFINE_list(
    "against", [], "Also time the PyTorch rival: eager (torch) and/or torch.compile of it "
    "(torch_compile), e.g. --against=torch,torch_compile.")
flags.register_validator("against", lambda names: set(names) <= set(RIVALS),
                         f"--against takes a list of {', '.join(RIVALS)}")
_STEPS_PER_CALL = flags.DEFINE_integer(
    "steps_per_call", 1, "K > 1: time K train steps per dispatch on device-resident data "
    "(the trainer's --steps_per_call); reported per step.")
_E2E = flags.DEFINE_integer("e2e_examples", 0, "Also time one epoch of this many synthetic "
                            "examples with data loading (0 = off).")
_JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of a table.")
_PROFILE = flags.DEFINE_string(
    "profile", None, "Also trace >= 5 train steps (whole calls) with jax.profiler into "
    "DIR/MODEL (a Perfetto trace too); python -m jax_attn.tools.profile_table DIR tabulates it.")

# Dense bf16 peak FLOP/s by device kind, for MFU.
PEAK_BF16 = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12}


def _peak(kind: str) -> float | None:
  return next((v for k, v in PEAK_BF16.items() if kind.startswith(k)), None)


class JaxSide:
  """Compiled train/eval steps of one model's recipe on a synthetic batch."""

  def __init__(self, name: str):
    self.config = config = configs.get_recipe(
        name, _RECIPE.value, dtype=_DTYPE.value, image_size=_IMAGE.value,
        batch_size=_BATCH.value, attention_impl=_IMPL.value)
    self.parallel = Parallel.create(_PARALLEL.value, _BATCH.value, _CPU_KERNELS.value)
    self.model = models.get_model(config, batch_axis=None if _PARALLEL.value == "none" else AXIS)
    shape = (_IMAGE.value, _IMAGE.value, 3)
    shapes = jax.eval_shape(lambda: models.init_variables(self.model, jax.random.key(0), shape))
    schedule = optim.make_schedule(config, 1)
    tx = optim.make_optimizer(config, schedule, 1, shapes["params"], shapes.get("batch_stats", {}))
    lookahead = (Lookahead(config.lookahead_every_steps, config.lookahead_decay, config.epochs)
                 if config.lookahead_every_steps else None)
    host_state = jax.device_get(create_state(self.model, tx, 0, shape, bool(lookahead)))
    self.params = models.count_params(host_state.params)
    self.split = data.SyntheticSource(max(_BATCH.value, _E2E.value), _IMAGE.value).load("train")
    host_batch = next(pipeline.train_batches(self.split, seed=0, epoch=0,
                                             global_batch=_BATCH.value))
    self.batch = self.parallel.put_batch(host_batch)
    self.eval_batch = self.parallel.put_batch({**host_batch, "mask": np.ones(_BATCH.value, bool)})
    self.state = self.parallel.replicate(host_state)
    normalise = configs.base(name).augment  # the recipe's normalisation, no augmentation
    normalise.normalization = config.augment.normalization
    body = lambda impl: make_train_body(  # noqa: E731
        self.model, tx, normalise, config.label_smoothing, 1, lookahead, impl)
    train = self.parallel.wrap(body(_IMPL.value), donate_state=True)
    evaluate = self.parallel.wrap(make_eval_body(self.model, normalise, attention_impl=_IMPL.value),
                                  donate_state=False)
    start = time.perf_counter()
    self.train = train.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    self.steps_per_call = _STEPS_PER_CALL.value
    if self.steps_per_call > 1:  # the same batch K times per call, as K=1 repeats it
      columns = lambda x: np.repeat(x[:, None], self.steps_per_call, 1)  # noqa: E731
      self.block = self.parallel.put_batch({
          "index": columns(host_batch["index"]), "position": columns(host_batch["position"]),
          "valid": np.ones((_BATCH.value, self.steps_per_call), bool)})
      self.data = multistep.resident(self.split, self.parallel)
      call = self.parallel.wrap(multistep.scan_train(body(_IMPL.value)), donate_state=True,
                                replicated=2)
      start = time.perf_counter()
      self.train_call = call.lower(self.state, self.data, self.block).compile()
      self.compile_s = time.perf_counter() - start
    self.eval = evaluate.lower(self.state, self.eval_batch).compile()
    counted = self.train
    if _IMPL.value != "einsum":  # kernels and loop bodies hide FLOPs: count the einsum core's
      counted = self.parallel.wrap(body("einsum"), donate_state=False).lower(
          self.state, self.batch).compile()
    cost = counted.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    # pmap/shard_map programs are per device: scale to the global batch.
    self.flops_per_image = flops * (1 if self.parallel.mode == "none" else self.parallel.num_devices) / _BATCH.value

  def train_steps(self, n: int) -> list[float]:
    """Seconds per step of ``n`` steps (with K > 1: of each call, divided by K)."""
    times = []
    if self.steps_per_call > 1:
      for _ in range(max(1, n // self.steps_per_call)):
        start = time.perf_counter()
        self.state, metrics = self.train_call(self.state, self.data, self.block)
        jax.block_until_ready(metrics)
        times += [(time.perf_counter() - start) / self.steps_per_call] * self.steps_per_call
      return times
    for _ in range(n):
      start = time.perf_counter()
      self.state, metrics = self.train(self.state, self.batch)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
    return times

  def eval_steps(self, n: int) -> list[float]:
    times = []
    for _ in range(n):
      start = time.perf_counter()
      jax.block_until_ready(self.eval(self.state, self.eval_batch))
      times.append(time.perf_counter() - start)
    return times

  def epoch(self) -> float:
    """One epoch of ``e2e_examples`` with the real input pipeline (host order, prefetch)."""
    split = data.ArraySplit(self.split.images[:_E2E.value], self.split.labels[:_E2E.value],
                                self.split.class_names)
    start = time.perf_counter()
    metrics = None
    for batch in pipeline.prefetch(pipeline.train_batches(
        split, seed=0, epoch=0, global_batch=_BATCH.value), self.parallel.put_batch):
      self.state, metrics = self.train(self.state, batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  def peak_memory(self) -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def race(timers: dict[str, Callable[[int], list[float]]], steps: int, rounds: int
         ) -> dict[str, float]:
  """The median step time of each timer (``jax`` among them), the timers taking turns in every
  round after a warm-up of 2 steps each, so a machine's slow spells hit all alike."""
  per_round = max(1, steps // rounds)
  for timer in timers.values():
    timer(2)
  times: dict[str, list[float]] = {name: [] for name in timers}
  for _ in range(rounds):
    for name, timer in timers.items():
      times[name] += timer(per_round)
  return {name: statistics.median(t) for name, t in times.items()}


def _rivals(name: str, split: data.ArraySplit) -> tuple[dict[str, Any], dict[str, str]]:
  """The ``--against`` PyTorch sides that compile and run a step; errors of the others."""
  if not _AGAINST.value:
    return {}, {}
  from jax_attn.tools import torch_bench  # pylint: disable=g-import-not-at-top
  rivals, errors = {}, {}
  for rival in _AGAINST.value:
    try:
      side = torch_bench.TorchSide(name, _RECIPE.value, _BATCH.value, _IMAGE.value, split,
                                   compiled=rival == "torch_compile")
      side.train_steps(1), side.eval_steps(1)  # torch.compile compiles here
    except Exception as e:  # pylint: disable=broad-except
      errors[f"{rival}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      continue
    rivals[rival] = side
  return rivals, errors


def bench_model(name: str) -> dict[str, Any]:
  side = JaxSide(name)
  rivals, errors = _rivals(name, side.split)
  train = race({"jax": side.train_steps, **{r: s.train_steps for r, s in rivals.items()}},
               _STEPS.value, _ROUNDS.value)
  evals = race({"jax": side.eval_steps, **{r: s.eval_steps for r, s in rivals.items()}},
               _STEPS.value, _ROUNDS.value)
  step = train["jax"]
  kind = jax.devices()[0].device_kind
  achieved = side.flops_per_image * _BATCH.value / step
  peak = _peak(kind) if _DTYPE.value == "bfloat16" else None
  result = {
      "model": name, "recipe": side.config.recipe, "params": side.params, "batch_size": _BATCH.value,
      "image_size": _IMAGE.value, "dtype": _DTYPE.value, "attention_impl": _IMPL.value,
      "cpu_kernels": _CPU_KERNELS.value if jax.default_backend() == "cpu" else None,
      "parallel": _PARALLEL.value, "steps_per_call": _STEPS_PER_CALL.value,
      "backend": jax.default_backend(), "device_kind": kind,
      "devices": side.parallel.num_devices, "compile_s": side.compile_s,
      "train_step_ms": step * 1e3, "train_images_per_sec": _BATCH.value / step,
      "eval_images_per_sec": _BATCH.value / evals["jax"],
      "gflops_per_image": side.flops_per_image / 1e9, "achieved_tflops": achieved / 1e12,
      "mfu": achieved / peak if peak else None, "peak_memory_bytes": side.peak_memory(),
  }
  result.update(errors)
  for rival, torch_side in rivals.items():  # keys: torch_* / speedup_*, torch_compile_* / ..._compile
    suffix = "_compile" if rival != "torch" else ""
    result.update({
        "torch_device": str(torch_side.device), f"{rival}_train_step_ms": train[rival] * 1e3,
        f"{rival}_eval_images_per_sec": _BATCH.value / evals[rival],
        f"speedup_train{suffix}": train[rival] / step,
        f"speedup_eval{suffix}": evals[rival] / evals["jax"]})
  if _PROFILE.value:  # whole calls of K steps; profile_table reads how many steps were traced
    with jax.profiler.trace(f"{_PROFILE.value}/{name}", create_perfetto_trace=True):
      traced = len(side.train_steps(-(-5 // side.steps_per_call) * side.steps_per_call))
    Path(f"{_PROFILE.value}/{name}/steps.txt").write_text(f"{traced}\n")
  if _E2E.value:
    result["e2e_epoch_s"] = side.epoch()
    if "torch" in rivals:
      result["torch_e2e_epoch_s"] = rivals["torch"].epoch(_E2E.value)
      result["speedup_e2e"] = result["torch_e2e_epoch_s"] / result["e2e_epoch_s"]
  return result


def _table(results: list[dict[str, Any]]) -> str:
  columns = [("model", "{}"), ("compile_s", "{:.1f}"), ("train_step_ms", "{:.1f}"),
             ("train_images_per_sec", "{:,.0f}"), ("eval_images_per_sec", "{:,.0f}"),
             ("gflops_per_image", "{:.3f}"), ("achieved_tflops", "{:.3f}"), ("mfu", "{:.1%}"),
             ("peak_memory_bytes", "{:,}"), ("torch_device", "{}"), ("torch_train_step_ms", "{:.1f}"),
             ("speedup_train", "{:.2f}x"), ("speedup_eval", "{:.2f}x"),
             ("torch_compile_train_step_ms", "{:.1f}"), ("speedup_train_compile", "{:.2f}x"),
             ("speedup_eval_compile", "{:.2f}x"),
             ("e2e_epoch_s", "{:.2f}"), ("torch_e2e_epoch_s", "{:.2f}"), ("speedup_e2e", "{:.2f}x")]
  columns = [(k, f) for k, f in columns if any(r.get(k) is not None for r in results)]
  rows = [[k for k, _ in columns]] + [
      [f.format(r[k]) if r.get(k) is not None else "-" for k, f in columns] for r in results]
  widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: list[str]) -> None:
  del argv
  results = [bench_model(name) for name in _MODELS.value]
  if _JSON.value:
    print(json.dumps(results, indent=2))
    return
  first = results[0]
  print(f"jax_attn bench: batch {_BATCH.value}, {_IMAGE.value}x{_IMAGE.value}, {_DTYPE.value}, "
        f"{first['devices']} x {first['device_kind']} ({first['backend']}), jax {jax.__version__}; "
        f"speedup = torch time / jax time, same run")
  print(_table(results))
  for r in results:
    for key in ("torch_error", "torch_compile_error"):
      if key in r:
        print(f"{r['model']}: {key.removesuffix('_error')} left out of the race: {r[key]}")


if __name__ == "__main__":
  app.run(main)
