#!/usr/bin/env bash
# Runs jax_attn.main once, or as N local processes joined by jax.distributed.
#   ./launch.sh -- --model=vit                            # one process, all local devices
#   ./launch.sh --num_processes=2 -- --model=vit ...      # 2 local processes (coordinator 127.0.0.1)
#   srun ./launch.sh -- --distributed --model=vit ...     # SLURM: one process per task, auto-detected
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"  # works from a source checkout too
exec python3 -m jax_attn.launch "$@"
