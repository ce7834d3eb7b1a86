#!/usr/bin/env bash
# Runs jax_attn.main once, or as N local processes joined by jax.distributed.
#   ./launch.sh -- --model=vit                            # one process, all local devices
#   ./launch.sh --num_processes=2 -- --model=vit ...      # 2 local processes (coordinator 127.0.0.1)
#   srun ./launch.sh -- --distributed --model=vit ...     # SLURM: one process per task, auto-detected
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"  # works from a source checkout too
# The interpreter that has jax_attn: $PYTHON if set (e.g. .venv/bin/python), else python3 on PATH.
python="${PYTHON:-python3}"
if ! "$python" -c "import jax, jax_attn" 2>/dev/null; then
  echo "launch.sh: error: $python cannot import jax and jax_attn: set PYTHON to the interpreter you installed them into (e.g. PYTHON=.venv/bin/python ./launch.sh ...)" >&2
  exit 2
fi
exec "$python" -m jax_attn.launch "$@"
