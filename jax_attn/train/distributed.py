"""Multi-process (multi-host) start-up through ``jax.distributed``.

Explicit settings come from flags or the ``JAX_ATTN_*`` variables that
``launch.sh`` sets; with none, ``jax.distributed.initialize()`` auto-detects
SLURM, Cloud TPU and other cluster environments.
"""
from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "JAX_ATTN_COORDINATOR"
ENV_NUM_PROCESSES = "JAX_ATTN_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_ATTN_PROCESS_ID"


def settings_from_env() -> tuple[str | None, int | None, int | None]:
  num = os.environ.get(ENV_NUM_PROCESSES)
  pid = os.environ.get(ENV_PROCESS_ID)
  return (os.environ.get(ENV_COORDINATOR), int(num) if num else None, int(pid) if pid else None)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the job; must run before anything asks JAX for its devices."""
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
    # CPU devices talk through gloo; accelerators use their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator is None and num_processes is None and process_id is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
