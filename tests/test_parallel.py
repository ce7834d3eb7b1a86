"""pmap and shard_map run the same step body as one device: same params after 20 steps.

Runs in a subprocess with 8 fake CPU devices (XLA must see the flag before it starts).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    import tiny
    from jax_attn import data
    from jax_attn.data import augment, pipeline
    from jax_attn.models import whitening
    from jax_attn.train.parallel import Parallel
    from jax_attn.train.state import create_state
    from jax_attn.train.steps import evaluate, make_eval_body, make_train_body

    name = sys.argv[1]
    # vit_airbench: the ViT's airbench tokenizer (batch norm, whitening) on 9 tokens
    fields = {"vit_airbench": {"dropout_rate": 0.0, "tokenizer": "airbench", "stem_widths": (),
                               "stem_convs": (1,)},
              "sa_cnn_bn": {"norm": "batch"}, "vit_dropout": {"dropout_rate": 0.1}}.get(name, {})
    family = "vit" if name.startswith("vit") else "sa_cnn"
    model = tiny.model(family, **fields)
    split = data.SyntheticSource(640, 8).load("train")
    aug = tiny.augment(crop_padding=2, flip=True)  # layout-independent by design
    # SGD, not Adam: the attention key bias's true gradient is exactly 0 (softmax ignores
    # it), so Adam turns the rounding noise of different summation orders into lr-sized steps.
    tx = optax.sgd(0.05)
    host_state = jax.device_get(create_state(model, tx, 0, (8, 8, 3)))
    host_state = jax.device_get(host_state.with_params(whitening.set_whitening(  # as the trainer
        host_state.params, np.asarray(augment.normalize(split.images, "reference")))))
    params, evals = {}, {}
    eval_split = data.SyntheticSource(640, 8).load("test")  # 128 examples: padded batches
    for mode in ("none", "pmap", "shard_map"):
      par = Parallel.create(mode, 32)
      # batch norm over the global batch when it is split (as the trainer builds it)
      net = tiny.model(family, **fields, batch_axis=None if mode == "none" else "batch")
      step = par.wrap(make_train_body(net, tx, aug, 0.1), donate_state=True)
      state = par.replicate(host_state)
      for batch in pipeline.train_batches(split, seed=0, epoch=0, global_batch=32):
        state, _ = step(state, par.put_batch(batch))
      params[mode] = jax.tree.leaves(par.to_host(state).params)
      eval_step = par.wrap(make_eval_body(model, aug, flip=True), donate_state=False)
      evals[mode] = evaluate(eval_step, state, eval_split, Parallel.create(mode, 48))
    diffs = {mode: max(float(np.max(np.abs(a - b))) for a, b in zip(params["none"], params[mode]))
             for mode in ("pmap", "shard_map")}
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(host_state.params), params["none"]))
    print(json.dumps({"diffs": diffs, "moved": moved, "devices": jax.device_count(),
                      "evals": evals}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sa_cnn", "vit_airbench", "sa_cnn_bn", "vit_dropout"])
def test_pmap_and_shard_map_match_single_device(name):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, "-c", SCRIPT, name], capture_output=True, text=True,
                          env=env, timeout=600)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  assert report["moved"] > 1e-3  # 20 steps really changed the params
  assert report["diffs"]["pmap"] < 1e-5, report
  assert report["diffs"]["shard_map"] < 1e-5, report
  evals = report["evals"]  # flip test-time augmentation: same sums in every layout
  assert evals["none"]["eval_count"] == 128 and "eval_accuracy_no_flip" in evals["none"]
  for mode in ("pmap", "shard_map"):
    assert evals[mode]["eval_count"] == 128
    assert abs(evals[mode]["eval_loss"] - evals["none"]["eval_loss"]) < 1e-4, evals
    assert evals[mode]["eval_accuracy"] == pytest.approx(evals["none"]["eval_accuracy"], abs=0.02)


def test_cpu_kernels_choose_per_jit_compiler_options():
  from jax_attn import configs
  from jax_attn.errors import UserError
  from jax_attn.train.parallel import compiler_options
  assert compiler_options("xla") is None
  assert compiler_options("ynnpack") == {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
      "xla_cpu_multi_thread_eigen": False}
  with pytest.raises(UserError, match="--cpu_kernels=bogus is unknown"):
    configs.get_recipe("sa_cnn", "notebook", cpu_kernels="bogus")


@pytest.mark.slow
def test_ynnpack_and_xla_kernels_train_alike():
  import jax
  import numpy as np
  import optax
  import tiny
  from jax_attn import data
  from jax_attn.data import pipeline as input_pipeline
  from jax_attn.train.parallel import Parallel
  from jax_attn.train.state import create_state
  from jax_attn.train.steps import make_train_body

  model = tiny.model("sa_cnn")
  tx = optax.sgd(0.05)
  host_state = jax.device_get(create_state(model, tx, 0, (8, 8, 3)))
  split = data.SyntheticSource(80, 8).load("train")
  params = {}
  for kernels in ("ynnpack", "xla"):
    parallel = Parallel.create("none", 16, kernels)
    step = parallel.wrap(make_train_body(model, tx, tiny.augment(), 0.0), False)
    state = parallel.replicate(host_state)
    for batch in input_pipeline.train_batches(split, seed=0, epoch=0, global_batch=16):
      state, _ = step(state, parallel.put_batch(batch))
    params[kernels] = jax.tree.leaves(parallel.to_host(state).params)
  moved = max(float(np.max(np.abs(a - b)))
              for a, b in zip(jax.tree.leaves(host_state.params), params["xla"]))
  assert moved > 1e-3
  for a, b in zip(params["ynnpack"], params["xla"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
