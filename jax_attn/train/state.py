"""The train state: what changes during training, its initial value, and the lookahead."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jax_attn import models


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; plain arrays, so it checkpoints as it is."""
  step: jax.Array
  params: Any
  batch_stats: Any          # {} for models without batch norm
  opt_state: Any
  rng: jax.Array            # raw uint32 key data; step keys are fold_in(rng, step)
  slow: Any                 # the lookahead's average ({} when it is off)

  def variables(self, params: Any = None) -> dict[str, Any]:
    """The model's variables, with ``params`` instead of the state's when given."""
    params = self.params if params is None else params
    return {"params": params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}

  def with_params(self, params: Any) -> "TrainState":
    """The state with new initial ``params`` (e.g. data-dependent whitening filters)."""
    return self.replace(params=params, slow={**self.slow, "params": params} if self.slow else {})


@dataclasses.dataclass(frozen=True)
class Lookahead:
  """Every ``every_steps`` steps the weights (params and batch-norm statistics) become
  ``slow = rho * slow + (1 - rho) * weights`` and training continues from ``slow``, with
  ``rho = decay ** every_steps * (step / total_steps) ** 3``: ~0 early (no averaging), rising to
  ``decay ** every_steps`` at the end; at ``total_steps`` the weights become ``slow`` (airbench's
  lookahead: an EMA over the last part of training that the evaluated weights equal)."""
  every_steps: int
  decay: float
  total_steps: int

  def rho(self, step: jax.Array) -> jax.Array:
    progress = step.astype(jnp.float32) / self.total_steps
    return jnp.where(step >= self.total_steps, 1.0, self.decay ** self.every_steps * progress ** 3)

  def apply(self, state: TrainState) -> TrainState:
    due = (state.step % self.every_steps == 0) | (state.step >= self.total_steps)
    rho = self.rho(state.step)
    fast = {"params": state.params, "batch_stats": state.batch_stats}
    mixed = jax.tree.map(lambda s, f: (rho * s + (1 - rho) * f).astype(f.dtype), state.slow, fast)
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(due, a, b), new, old)  # noqa: E731
    slow, fast = pick(mixed, state.slow), pick(mixed, fast)
    return state.replace(slow=slow, params=fast["params"], batch_stats=fast["batch_stats"])


def create_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                 image_shape: tuple[int, int, int], lookahead: bool = False) -> TrainState:
  """The initial state of ``seed``, built by one compiled program.

  Run eagerly, ``model.init`` compiles each op separately (15 s for the notebook's SA-CNN on a
  2-core CPU, 4.4 s as one program). On a CPU it compiles at LLVM -O1: the same bits as -O2 in
  30-88 % of the time for this one-off program.
  """
  options = {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None
  build = functools.partial(initial_state, model, tx, seed, image_shape, lookahead)
  return jax.jit(build, compiler_options=options)()


def initial_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                  image_shape: tuple[int, int, int], lookahead: bool = False) -> TrainState:
  """``create_state``'s computation, traceable."""
  root = jax.random.key(seed)
  variables = models.init_variables(model, jax.random.fold_in(root, 0), image_shape)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return TrainState(step=jnp.int32(0), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), rng=jax.random.key_data(jax.random.fold_in(root, 1)),
                    slow={"params": params, "batch_stats": batch_stats} if lookahead else {})
