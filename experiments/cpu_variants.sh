#!/usr/bin/env bash
# CPU figures of RESULTS.md: the SA-CNN's attention paths in the airbench recipe, and the race of
# the airbench recipes against airbench93's network in PyTorch at batch 1024. Each bench call is
# its own process; the variants take turns. Needs torch (pip install torch==2.13.0).
# Usage: bash experiments/cpu_variants.sh [OUT_DIR]   (~30 minutes on 2 cores)
set -euo pipefail
out="${1:-experiments/results/cpu_variants}"
mkdir -p "$out"
bench() { python -m jax_attn.tools.bench --models=sa_cnn --json "$@"; }
for i in 1 2 3; do
  bench --recipe=airbench --batch_size=1000 --steps=3 --rounds=1 > "$out/airbench_einsum_$i.json"
  bench --recipe=airbench --batch_size=1000 --steps=3 --rounds=1 --attention_impl=chunked \
    > "$out/airbench_chunked_$i.json"
done
for i in 1 2 3; do
  bench --recipe=airbench_noattn --batch_size=1024 --steps=4 --rounds=2 --against=torch \
    > "$out/race_airbench_noattn_$i.json"
  bench --recipe=airbench --batch_size=1024 --steps=4 --rounds=2 --against=torch \
    > "$out/race_airbench_$i.json"
done
