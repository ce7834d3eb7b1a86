#!/usr/bin/env bash
# One prepared GPU session (H100/H200, < 8 minutes): installs nothing, runs from the source tree.
# The device image has jax (CUDA), flax, optax, orbax, chex, absl, Pillow, torch; no TF/tfds.
# Usage on the device machine, from the repo root:   bash experiments/gpu_bench.sh "$OUT"
# Real data: copy ../shared/data/cifar10-jpeg into the git-ignored .data/ beforehand and carry it.
set -uo pipefail
out="${1:-experiments/results/gpu}"
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# 1. Race against the PyTorch reference (same run, alternating), float32 and bf16.
python -m jax_attn.bench --models=sa_cnn,vit --against=torch --steps=40 --e2e_examples=12800 \
  --json | tee "$out/bench_f32.json"
python -m jax_attn.bench --models=sa_cnn,vit --dtype=bfloat16 --steps=40 --json | tee "$out/bench_bf16.json"
python -m jax_attn.bench --models=sa_cnn --attention_impl=fused --dtype=bfloat16 --steps=40 --json \
  | tee "$out/bench_bf16_fused.json"
python -m jax_attn.bench --models=sa_cnn --attention_impl=chunked --steps=20 --json \
  | tee "$out/bench_f32_chunked.json"
# 2. The notebook's SA-CNN recipe end to end (10 epochs) and the tuned SA-CNN, on real data if carried.
data="--synthetic --synthetic_size=50000"
[ -d .data/cifar10-jpeg/train ] && data="--image_folder=.data/cifar10-jpeg"
python -m jax_attn.main --model=sa_cnn --recipe=seed $data --workdir="$out/sa_cnn_seed" \
  --log_every_steps=200 2>&1 | tail -15 | tee "$out/sa_cnn_seed.log"
python -m jax_attn.main --model=sa_cnn --recipe=tuned $data --workdir="$out/sa_cnn_tuned" \
  --log_every_steps=100 2>&1 | tail -15 | tee "$out/sa_cnn_tuned.log"
rm -rf "$out"/*/checkpoints  # keep summaries and metrics only
