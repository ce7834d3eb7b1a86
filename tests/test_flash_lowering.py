"""``--attention_impl=flash`` as a GPU compiles it, checked without a GPU: the models'
train steps lowered for CUDA (JAX lowers for any platform; only compiling needs the device).

The interpreter tests in ``test_attention.py`` check the kernel's arithmetic; these check the
program a GPU would get: every attention layer runs the Triton kernels forward and backward
(lowering also runs Pallas's Triton checks of block shapes and dtypes), and no N x N tensor is
left in it, so the SA-CNN's largest tensor grows as N with the image where the einsum path's
grows as N².
"""
import collections
import math
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import tiny
from jax_attn import configs, data, models
from jax_attn.data import pipeline
from jax_attn.models import attention
from jax_attn.train.state import create_state
from jax_attn.train.steps import make_train_body

pytestmark = pytest.mark.slow  # full-size networks, compiled

_TENSOR = re.compile(r"tensor<((?:\d+x)+)\w+>")
_KERNELS = ("mha_forward", "mha_preprocess_backward", "mha_backward")
# (model, recipe): positions N at 32 px (conv_tokens: 7x7 tokens and the class token)
_CASES = {("sa_cnn", "notebook"): 32 * 32, ("vit", "conv_tokens"): 7 * 7 + 1}
# Pallas's Triton lowering needs the target GPU's compute capability: jax 0.10 falls back to sm_90
# without a GPU, jax 0.11 asks for an abstract device (it raises "No supported GPU devices found").
_H100 = jax.sharding.AbstractMesh((1,), ("batch",), abstract_device=jax.sharding.AbstractDevice(
    device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu"))


def _cuda_train_step(monkeypatch, name: str, impl: str, size: int = 32, dtype=jnp.float32,
                     recipe: str = "notebook", batch: int = 2) -> tuple[str, list[str], int]:
  """A recipe's train step lowered for CUDA: the StableHLO text, the Pallas kernels it
  calls (one entry per call site) and its number of attention layers."""
  tx = optax.adam(1e-3)
  config = configs.get_recipe(name, recipe, dtype="bfloat16" if dtype == jnp.bfloat16 else "float32")
  model = models.get_model(config)
  state = create_state(model, tx, 0, (size, size, 3))
  layers = sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(state.params)
               if [p.key for p in path[-2:]] == ["query", "kernel"])
  split = data.SyntheticSource(batch, size).load("train")
  images = next(pipeline.train_batches(split, seed=0, epoch=0, global_batch=batch))
  body = make_train_body(model, tx, tiny.augment(), 0.0, attention_impl=impl)
  monkeypatch.setattr(attention, "flash_kernel_available", lambda: True)
  with jax.sharding.use_abstract_mesh(_H100):  # the GPU the kernels are lowered for
    traced = jax.jit(lambda s, b: body(s, b, None)).trace(state, images)
    text = traced.lower(lowering_platforms=("cuda",)).as_text()
  return text, _pallas_calls(traced.jaxpr.jaxpr), layers


def _pallas_calls(jaxpr) -> list[str]:
  """Names of the ``pallas_call``s in a jaxpr and its sub-jaxprs, per call site (StableHLO
  shares one function between calls of the same shapes, so it cannot be counted there)."""
  names = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      names.append(str(eqn.params.get("name", eqn.params.get("name_and_src_info"))).split()[0])
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          names += _pallas_calls(sub)
  return names


def _largest_tensor(text: str) -> int:
  return max(math.prod(int(d) for d in m.group(1).rstrip("x").split("x"))
             for m in _TENSOR.finditer(text))


@pytest.mark.parametrize("name, recipe, dtype", [
    ("sa_cnn", "notebook", jnp.float32), ("sa_cnn", "notebook", jnp.bfloat16),
    ("vit", "conv_tokens", jnp.float32)])
def test_flash_runs_the_triton_kernels_in_every_attention_layer(monkeypatch, name, recipe,
                                                                dtype):
  text, kernels, layers = _cuda_train_step(monkeypatch, name, "flash", dtype=dtype,
                                           recipe=recipe)
  assert layers >= 2 and collections.Counter(kernels) == {k: layers for k in _KERNELS}, kernels
  assert "custom_call @__gpu$xla.gpu.triton" in text  # compiled by Triton, not interpreted
  scores = "x{0}x{0}x".format(_CASES[name, recipe])  # a [..., N, N] score or weight tensor
  assert scores not in text
  assert scores in _cuda_train_step(monkeypatch, name, "einsum", recipe=recipe)[0]  # can fail


def test_flash_memory_grows_as_n_where_einsum_grows_as_n_squared(monkeypatch):
  """32 -> 64 px is 4x the positions N: the largest tensor of the SA-CNN's einsum step (its
  scores) grows 16x, the flash step's (an activation) 4x."""
  growth = {impl: _largest_tensor(_cuda_train_step(monkeypatch, "sa_cnn", impl, 64)[0])
            / _largest_tensor(_cuda_train_step(monkeypatch, "sa_cnn", impl, 32)[0])
            for impl in ("einsum", "flash")}
  assert growth == {"einsum": 16.0, "flash": 4.0}
