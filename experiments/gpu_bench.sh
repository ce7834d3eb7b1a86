#!/usr/bin/env bash
# Device call 1 (H100/H200; ~9 minutes): runs the project from the source tree (the image has jax
# with CUDA, flax, optax, orbax, chex, absl, Pillow, torch; no TF/tfds) and installs only the
# carried wheels the image lacks (gpu_common.sh).
# Three phases, all bounded by one deadline:
#   A. the benchmark race against the PyTorch reference (alone on the GPU),
#   B. the notebook's SA-CNN recipe, 10 epochs on real data (alone on the GPU: its wall time counts),
#   C. the tuned recipes and one-factor variants of them, 10 epochs each, side by side.
# Before the call, here: `bash experiments/gpu_prepare.sh` packs the data (.data; without it every
# run uses synthetic data) and the wheels the device image lacks (.whl); the call carries both.
# Usage on the device machine, from the repo root:   bash experiments/gpu_bench.sh "$OUT" [SECONDS]
# What comes back: OUT/session.log (everything printed), OUT/runs.tgz (every run's config,
# metrics, summary and log, and the benchmark JSON), OUT/ckpt_*.tgz (final checkpoints).
source "$(dirname "$0")/gpu_common.sh" "$@"

# A. The race (issue 6): same run, alternating JAX and PyTorch, float32 then bf16.
bench_steps=20; [ -n "${SMOKE:-}" ] && bench_steps=2
stamp "A: benchmark"
for model in sa_cnn vit; do  # one call each: a JSON is printed only when its call ends
  timeout 60 $py -m jax_attn.bench --models=$model --against=torch --steps=$bench_steps --rounds=2 \
    --json > "$runs/bench_f32_$model.json"
done
timeout 40 $py -m jax_attn.bench --models=sa_cnn --dtype=bfloat16 --steps=$bench_steps --rounds=2 \
  --json > "$runs/bench_bf16_sa_cnn.json"
cat "$runs"/bench_*.json

# B. The notebook's SA-CNN recipe alone on the GPU; phase C starts when it ends or at 5/9 of the budget.
stamp "B: seed SA-CNN"
train sa_cnn_seed --model=sa_cnn --recipe=seed & seed_pid=$!
while kill -0 $seed_pid 2>/dev/null && [ $SECONDS -lt $(( budget * 5 / 9 )) ]; do sleep 2; done

# C. Tuned recipes and one-factor variants (selection on train[:90%] / train[90%:] only).
stamp "C: tuned runs"
train sa_cnn_tuned --model=sa_cnn --recipe=tuned_v1 &
train sa_cnn_tuned_wide --model=sa_cnn --recipe=tuned_v1 "--model_arg=widths=(64,128,192)" \
  "--model_arg=convs_per_stage=(2,2,1)" &
train sa_cnn_tuned_b128 --model=sa_cnn --recipe=tuned_v1 --batch_size=128 --learning_rate=2e-3 &
train sa_cnn_tuned_lr8e-3 --model=sa_cnn --recipe=tuned_v1 --learning_rate=8e-3 &
train sa_cnn_tuned_wd5e-3 --model=sa_cnn --recipe=tuned_v1 --weight_decay=5e-3 &
train sa_cnn_tuned_ls0 --model=sa_cnn --recipe=tuned_v1 --label_smoothing=0 &
train sa_cnn_seed_bf16 --model=sa_cnn --recipe=seed --dtype=bfloat16 &
train vit_tuned --model=vit --recipe=tuned_v1 &
train vit_tuned_lr3e-3 --model=vit --recipe=tuned_v1 --learning_rate=3e-3 &
finish sa_cnn_seed sa_cnn_seed_bf16 sa_cnn_tuned sa_cnn_tuned_wide vit_tuned
