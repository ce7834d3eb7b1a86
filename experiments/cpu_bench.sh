#!/usr/bin/env bash
# CPU figures recorded in experiments/README.md: input pipeline and the race against PyTorch.
# Needs torch (pip install torch==2.13.0). Usage: bash experiments/cpu_bench.sh [OUT_DIR]
set -euo pipefail
out="${1:-experiments/results/cpu_bench}"
mkdir -p "$out"
python -m jax_attn.data_bench --json | tee "$out/data_bench.json"
python -m jax_attn.bench --models=vit --against=torch --steps=40 --e2e_examples=6400 --json \
  | tee "$out/bench_vit.json"
python -m jax_attn.bench --models=vit --against=torch --steps=40 --attention_impl=fused --json \
  | tee "$out/bench_vit_fused.json"
python -m jax_attn.bench --models=sa_cnn --against=torch --steps=8 --rounds=2 --json \
  | tee "$out/bench_sa_cnn.json"
