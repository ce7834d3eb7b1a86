"""Train-step time of each CPU speed variant of the models, on and off, alternating in one process.

    python experiments/speed_variants.py [--rounds=5] [--steps=10]

Each variant is switched off by replacing the layer or function with its plain Flax form at
trace time (same parameters); every program is compiled first, then the programs take turns.
"""
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_attn import config as config_lib, data, layers, models, optim, vit
from jax_attn.parallel import Parallel
from jax_attn.train import create_state, make_train_body

ROUNDS = int(next((a.split("=")[1] for a in sys.argv if a.startswith("--rounds=")), 5))
STEPS = int(next((a.split("=")[1] for a in sys.argv if a.startswith("--steps=")), 10))


def plain_matmul(x, kernel):
  return x @ kernel


def plain_dropout(x, key, rate, full_shape=None, batch_axis=None):  # nn.Dropout's draw
  if rate == 0.0:
    return x
  shape = tuple(full_shape or x.shape)
  mask = jax.random.bernoulli(key, 1.0 - rate, shape)
  if full_shape is not None:
    mask = mask[tuple(slice(0, n) for n in x.shape)]
  return jnp.where(mask, x / (1.0 - rate), jnp.zeros_like(x))


class ConvPatches(nn.Module):  # nn.Conv with stride p, the plain patch embedding
  hidden_dim: int
  patch_size: int
  init_style: str = "torch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    return nn.Conv(self.hidden_dim, (p, p), strides=(p, p), dtype=self.dtype, name="conv")(images)


def separate_qkv(self, x, num_queries=None):  # three matmuls instead of one
  batch, length, dim = x.shape
  heads = (self.num_heads, dim // self.num_heads)
  outs = []
  for name in ("query", "key", "value"):
    k, b = layers.DenseParams(dim, self.init_style, name=name)(dim)
    rows = x[:, :num_queries] if (name == "query" and num_queries) else x
    outs.append((layers.matmul(rows.astype(self.dtype), k.astype(self.dtype)) + b).reshape(
        rows.shape[0], rows.shape[1], *heads))
  return tuple(outs)


PATCHES = {
    "dense": (layers, "matmul", plain_matmul),
    "dropout": (layers, "apply_dropout", plain_dropout),
    "patch": (vit, "PatchEmbedding", ConvPatches),
    "qkv": (layers.QKVProjection, "__call__", nn.compact(separate_qkv)),
    "last_block": (vit, "last_block_queries", lambda *a, **k: None),
}


def build(recipe_model, recipe, off):
  impl = next((v.split(":")[1] for v in off if v.startswith("impl:")), "einsum")
  off = tuple(v for v in off if not v.startswith("impl:"))
  config = config_lib.resolve(recipe_model, recipe, {"data.synthetic": True, "attention_impl": impl})
  config = config_lib.replace(config, image_size=32)
  model = config_lib.build_model(config)
  saved = {}
  for name in off:
    owner, attr, plain = PATCHES[name]
    saved[name] = getattr(owner, attr)
    setattr(owner, attr, plain)
  try:
    tx = optim.make_optimizer(config.optimizer if config.optimizer != "muon" else "sgd",
                              optim.make_schedule("constant", config.learning_rate, 1),
                              momentum=config.momentum)
    state = jax.device_get(create_state(model, tx, 0, (32, 32, 3)))
    parallel = Parallel.create("none", config.batch_size)
    split = data.SyntheticSource(config.batch_size, 32).load("train")
    batch = parallel.put_batch({"image": split.images, "label": split.labels,
                                "position": np.arange(config.batch_size, dtype=np.int32),
                                "index": np.arange(config.batch_size, dtype=np.int32)})
    body = make_train_body(model, tx, config.augment, config.label_smoothing, 45)
    step = parallel.wrap(body, donate_state=False).lower(parallel.replicate(state), batch).compile()
  finally:
    for name in off:
      owner, attr, _ = PATCHES[name]
      setattr(owner, attr, saved[name])
  return step, parallel.replicate(state), batch, config.batch_size


def main():
  cases = {
      ("vit", "seed"): [(), ("dense",), ("dropout",), ("patch",), ("qkv",), ("last_block",),
                        ("dense", "dropout", "patch", "qkv", "last_block")],
      ("vit", "tuned_v5"): [(), ("dense",), ("qkv",), ("dense", "qkv")],
  }
  cases = {
      ("vit", "seed"): [(), ("dropout",), ("last_block",), ("dropout", "last_block"),
                        ("dense", "dropout", "patch", "qkv", "last_block")],
      ("sa_cnn", "seed"): [(), ("impl:chunked",), ("impl:fused",)],
      ("sa_cnn", "tuned_v2"): [(), ("impl:chunked",), ("impl:fused",)],
  } if "--second" in sys.argv else cases
  only = [a.split("=")[1] for a in sys.argv if a.startswith("--recipe=")]
  for (model, recipe), variants in cases.items():
    if only and recipe not in only:
      continue
    built = {v: build(model, recipe, v) for v in variants}
    times = {v: [] for v in variants}
    for v, (step, state, batch, _) in built.items():
      jax.block_until_ready(step(state, batch))
    for _ in range(ROUNDS):
      for v, (step, state, batch, _) in built.items():
        for _ in range(STEPS):
          start = time.perf_counter()
          jax.block_until_ready(step(state, batch))
          times[v].append(time.perf_counter() - start)
    base = statistics.median(times[()])
    batch_size = built[()][3]
    print(f"{model}/{recipe} batch {batch_size}: median train step over {ROUNDS} rounds x {STEPS} steps")
    for v in variants:
      t = statistics.median(times[v])
      label = "all variants on (einsum)" if not v else "off: " + "+".join(v)
      print(f"  {label:<50} {1e3 * t:8.1f} ms  ({t / base:.3f}x the time with all on)")
    sys.stdout.flush()


if __name__ == "__main__":
  main()
