"""Seconds to build a recipe's initial train state, each way in a fresh process (compiles
cannot be reused), and whether its bits equal the eager init's (RESULTS.md).

    python experiments/cpu_init_check.py sa_cnn notebook
    python experiments/cpu_init_check.py vit conv_tokens

Ways: ``eager`` (``state.initial_state`` op by op), ``jit-O2`` (XLA's default options),
``jit-O1`` (``state.create_state`` itself, on the CPU) and ``jit-O0``.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

CHILD = """
import sys, time
import jax, numpy as np, optax
from jax_attn import configs, models
from jax_attn.train import state as train
name, recipe, way, out = sys.argv[1:]
model = models.get_model(configs.get_recipe(name, recipe))
args = (model, optax.adam(1e-3), 0, (32, 32, 3), True)
build = lambda: train.initial_state(*args)
start = time.perf_counter()
if way == "eager":
  state = build()
elif way == "jit-O1":  # the product's own path
  state = train.create_state(*args)
else:
  level = {"jit-O2": None, "jit-O0": 0}[way]
  state = jax.jit(build, compiler_options=None if level is None else
                  {"xla_backend_optimization_level": level})()
leaves = [np.asarray(x) for x in jax.tree.leaves(jax.block_until_ready(state))]
print(f"{time.perf_counter() - start:.1f}")
np.savez(out, *leaves)
"""


def main(name: str, recipe: str) -> None:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  with tempfile.TemporaryDirectory() as tmp:
    leaves = {}
    for way in ("eager", "jit-O2", "jit-O1", "jit-O0"):
      out = os.path.join(tmp, f"{way}.npz")
      seconds = subprocess.run([sys.executable, "-c", CHILD, name, recipe, way, out], env=env,
                               check=True, capture_output=True, text=True).stdout.split()[-1]
      with np.load(out) as arrays:
        leaves[way] = [arrays[k] for k in sorted(arrays.files, key=lambda k: int(k[4:]))]
      diff = max(float(np.max(np.abs(a.astype(float) - b), initial=0.0))
                 for a, b in zip(leaves["eager"], leaves[way], strict=True))
      print(f"{name}/{recipe} {way:7s} {seconds:>6s} s  max |state - eager state| = {diff:.2g}",
            flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:3])
