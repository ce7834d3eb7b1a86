"""--dtype=bfloat16 really computes in bf16 (the lowered program), and an SA-CNN run stays finite."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny as tiny_recipe
from jax_attn import data
from jax_attn.data import pipeline
from jax_attn.train.state import create_state
from jax_attn.train.steps import make_train_body
from conftest import tiny

_OPERANDS = re.compile(r": \((tensor<[^)]*)\) -> tensor<[0-9x]*(\w+)>")


def _ops(name, dtype, op):
  """``(operand element types, result element type)`` of each ``stablehlo.op`` in the train
  step of model ``name`` built with compute ``dtype``."""
  model = tiny_recipe.model(name, dtype=dtype)
  tx = optax.adam(1e-3)
  state = create_state(model, tx, 0, (16, 16, 3))
  split = data.SyntheticSource(8, 16).load("train")
  batch = next(pipeline.train_batches(split, seed=0, epoch=0, global_batch=8))
  body = make_train_body(model, tx, tiny_recipe.augment(), 0.0)
  text = jax.jit(lambda s, b: body(s, b, None)).lower(state, batch).as_text()
  found = []
  for line in text.splitlines():
    if f"stablehlo.{op}" in line:
      operands, result = _OPERANDS.search(line).groups()
      found.append((set(re.findall(r"tensor<(?:\d+x)*(\w+)>", operands)), result))
  return found


@pytest.mark.parametrize("name", ["sa_cnn", "vit"])
def test_bfloat16_train_step_convolves_and_multiplies_in_bf16(name):
  convs = _ops(name, jnp.bfloat16, "convolution")
  assert convs and all(types == {"bf16"} and out == "bf16" for types, out in convs), convs
  dots = _ops(name, jnp.bfloat16, "dot_general")
  in_bf16 = [d for d in dots if d[0] == {"bf16"}]
  # float32 only where the attention scores are (the softmax's input and its gradient)
  assert len(in_bf16) >= 2 * len(dots) // 3, dots
  assert all(types == {"f32"} for types, _ in dots if types != {"bf16"}), dots
  float32 = _ops(name, jnp.float32, "convolution") + _ops(name, jnp.float32, "dot_general")
  assert all(types == {"f32"} for types, _ in float32)  # the check can tell the two apart


@pytest.mark.slow
def test_bfloat16_sa_cnn_run_stays_finite_and_follows_float32(main_cli, tmp_path):
  losses = {}
  for dtype in ("bfloat16", "float32"):
    main_cli([*tiny("sa_cnn"), "--max_steps=20", f"--dtype={dtype}",
              "--log_every_steps=1", f"--workdir={tmp_path / dtype}"])
    records = [json.loads(l) for l in (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()]
    losses[dtype] = np.array([r["train_loss"] for r in records if r["eval_loss"] is None])
  assert len(losses["bfloat16"]) == 20 and np.all(np.isfinite(losses["bfloat16"]))
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)
