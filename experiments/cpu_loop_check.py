"""Seconds per train step of a notebook network: one jitted step, against 2 steps inside
lax.scan and inside a fori_loop with a traced trip count (what --steps_per_call runs):
RESULTS.md.

    python experiments/cpu_loop_check.py sa_cnn '{}' 8
    python experiments/cpu_loop_check.py sa_cnn '{"attention_stages": ()}' 8
    python experiments/cpu_loop_check.py vit '{}' 64
"""
import ast
import sys
import time

import jax
import jax.numpy as jnp
import optax

from jax_attn import configs, data, models
from jax_attn.data import pipeline
from jax_attn.train.state import create_state
from jax_attn.train.steps import make_train_body

name, fields, batch_size = sys.argv[1], ast.literal_eval(sys.argv[2]), int(sys.argv[3])
model = models.get_model(name, **fields)
tx = optax.adam(1e-3)
state = create_state(model, tx, 0, (32, 32, 3))
split = data.SyntheticSource(batch_size, 32).load("train")
batch = jax.tree.map(jnp.asarray, next(pipeline.train_batches(
    split, seed=0, epoch=0, global_batch=batch_size)))
body = make_train_body(model, tx, configs.base(name).augment, 0.0)
one = jax.jit(lambda s, b: body(s, b, None))
scan = jax.jit(lambda s, b: jax.lax.scan(lambda s, _: body(s, b, None), s, None, length=2))
loop = jax.jit(lambda s, b, n: jax.lax.fori_loop(0, n, lambda i, s: body(s, b, None)[0], s))
for label, fn, args, steps in [("one step", one, (batch,), 1), ("scan of 2", scan, (batch,), 2),
                               ("fori_loop of 2", loop, (batch, jnp.int32(2)), 2)]:
  jax.block_until_ready(fn(state, *args))
  start = time.perf_counter()
  for _ in range(2):
    jax.block_until_ready(fn(state, *args))
  print(f"{label}: {(time.perf_counter() - start) / 2 / steps * 1e3:.1f} ms per step", flush=True)
