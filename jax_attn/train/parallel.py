"""Data parallelism: one per-device step body, wrapped for one device, pmap or shard_map.

The body has the signature ``body(state, batch, axis_name) -> out`` and averages
across ``axis_name`` itself (``lax.pmean``) when it is not None. This module owns
where arrays live: replicated state, batches split over the ``'batch'`` axis.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_attn.errors import UserError

AXIS = "batch"
# XLA:CPU hands dots and convolutions to YNNPACK (XNNPACK's successor) with the first option:
# ~2x faster convolutions on a 2-core CPU (RESULTS.md). The few products left to XLA are small
# (batched attention gradients), and running them on one Eigen thread lets independent kernels
# use the other cores.
_YNNPACK_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
                    "xla_cpu_multi_thread_eigen": False}


def compiler_options(cpu_kernels: str) -> dict[str, str | bool] | None:
  """Per-jit XLA options: on a CPU backend, ``ynnpack`` or XLA's own ``xla`` kernels."""
  if cpu_kernels == "xla" or jax.default_backend() != "cpu":
    return None
  return dict(_YNNPACK_OPTIONS)


StepBody = Callable[[Any, Any, "str | None"], Any]


@dataclasses.dataclass(frozen=True)
class Parallel:
  """How a global batch is split across devices (and processes)."""
  mode: str
  global_batch: int
  mesh: Mesh | None = None
  compiler_options: dict[str, str] | None = None

  @classmethod
  def create(cls, mode: str, global_batch: int, cpu_kernels: str = "ynnpack") -> "Parallel":
    """``mode``: ``none`` (one device), ``pmap`` or ``shard_map`` (all devices)."""
    if mode == "none" and jax.process_count() > 1:
      raise UserError("--parallel=none runs on one device; with several processes use "
                      "--parallel=pmap or --parallel=shard_map")
    devices = jax.devices() if mode != "none" else jax.local_devices()[:1]
    if global_batch < 1 or global_batch % len(devices):
      raise UserError(f"--batch_size={global_batch} is not divisible by the {len(devices)} "
                      f"devices of --parallel={mode}: use a multiple of {len(devices)}")
    return cls(mode, global_batch, Mesh(np.array(devices), (AXIS,)), compiler_options(cpu_kernels))

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def local_batch(self) -> int:
    """Examples this process feeds per step (its contiguous slice of the global batch)."""
    return self.global_batch // (1 if self.mode == "none" else jax.process_count())

  def wrap(self, body: StepBody, donate_state: bool, replicated: int = 1) -> Callable[..., Any]:
    """The same body as a jitted single-device, pmapped or shard_mapped function.

    Its first ``replicated`` arguments (the state; data resident on every device) are laid out
    by ``replicate``, the last one (the batch) by ``put_batch``. ``jax.pmap`` takes no
    compiler options, so pmap always uses XLA's own kernels.
    """
    donate = (0,) if donate_state else ()
    jit = functools.partial(jax.jit, donate_argnums=donate, compiler_options=self.compiler_options)
    if self.mode == "none":
      return jit(functools.partial(body, axis_name=None))
    per_device = functools.partial(body, axis_name=AXIS)
    if self.mode == "pmap":
      return jax.pmap(per_device, axis_name=AXIS, donate_argnums=donate)
    # check_vma=False keeps pmap's semantics: gradients of replicated params are per-device
    # and the body averages them itself (with it on, autodiff would already sum them).
    mapped = jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(),) * replicated + (P(AXIS),),
                           out_specs=P(),
                           check_vma=False)
    return jit(mapped)

  @functools.cached_property
  def _batch_sharding(self) -> NamedSharding:
    if self.mode == "pmap":  # pmap's inputs: [local devices, per device, ...] on local devices
      return NamedSharding(Mesh(np.array(jax.local_devices()), (AXIS,)), P(AXIS))
    return NamedSharding(self.mesh, P(AXIS))

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Moves this process's host batch onto its devices, already split."""
    if self.mode == "none":
      return jax.device_put(batch, self.mesh.devices.flat[0])
    sharding = self._batch_sharding
    if self.mode == "pmap":
      count = jax.local_device_count()
      split = lambda x: x.reshape((count, -1) + x.shape[1:])  # noqa: E731
      return jax.device_put(jax.tree.map(split, batch), sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  def replicate(self, tree: Any) -> Any:
    """Host pytree -> the state layout this mode expects (a copy per device)."""
    if self.mode == "none":
      return jax.device_put(tree, self.mesh.devices.flat[0])
    if self.mode == "pmap":
      return jax_utils.replicate(tree, devices=jax.local_devices())
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
        tree)

  def to_host(self, tree: Any) -> Any:
    """Device state or step output -> numpy, one copy (drops pmap's device axis)."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0]
                          if len(x.addressable_shards) > 1 else np.asarray(x)[0], tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)
