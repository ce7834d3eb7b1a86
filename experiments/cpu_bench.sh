#!/usr/bin/env bash
# CPU figures of RESULTS.md: the input pipeline and the race against PyTorch.
# Needs torch (pip install torch==2.13.0). Usage: bash experiments/cpu_bench.sh [OUT_DIR]
set -euo pipefail
out="${1:-experiments/results/cpu_bench}"
mkdir -p "$out"
bench() { python -m jax_attn.tools.bench --against=torch --json "$@"; }
python -m jax_attn.tools.data_bench --json | tee "$out/data_bench.json"
bench --models=vit --steps=40 --e2e_examples=6400 | tee "$out/bench_vit.json"
for i in 1 2; do  # the headline row again: absolute times swing between runs on shared machines
  bench --models=vit --steps=40 --e2e_examples=6400 | tee "$out/bench_vit_rerun$i.json"
done
bench --models=vit --steps=40 --cpu_kernels=xla | tee "$out/bench_vit_xla_kernels.json"
bench --models=vit --steps=40 --attention_impl=fused | tee "$out/bench_vit_fused.json"
bench --models=sa_cnn --steps=8 --rounds=2 --attention_impl=chunked | tee "$out/bench_sa_cnn_chunked.json"
bench --models=sa_cnn --steps=8 --rounds=2 | tee "$out/bench_sa_cnn.json"
bench --models=sa_cnn --steps=8 --rounds=2 --attention_impl=chunked --cpu_kernels=xla \
  | tee "$out/bench_sa_cnn_chunked_xla_kernels.json"
