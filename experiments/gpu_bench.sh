#!/usr/bin/env bash
# A device call (H100/H200; ~9 minutes) that recorded gpu_h100/ and gpu_grid/ (RESULTS.md): runs
# the project from the source tree (the image has jax
# with CUDA, flax, optax, orbax, chex, absl, Pillow, torch; no TF/tfds) and installs only the
# carried wheels the image lacks (gpu_common.sh).
# Three phases, all bounded by one deadline:
#   A. the benchmark race against the PyTorch reference (alone on the GPU),
#   B. the notebook's SA-CNN recipe, 10 epochs on real data (alone on the GPU: its wall time counts),
#   C. bn_adamw and one-factor variants of it, 10 epochs each, side by side.
# Before the call, here: `bash experiments/gpu_prepare.sh` packs the data (.data; without it every
# run uses synthetic data) and the wheels the device image lacks (.whl); the call carries both.
# Usage on the device machine, from the repo root:   bash experiments/gpu_bench.sh "$OUT" [SECONDS]
# What comes back: OUT/session.log (everything printed), OUT/runs.tgz (every run's config,
# metrics, summary and log, and the benchmark JSON), OUT/ckpt_*.tgz (final checkpoints).
source "$(dirname "$0")/gpu_common.sh" "$@"

# A. The race: same run, alternating JAX and PyTorch, float32 then bf16.
bench_steps=20; [ -n "${SMOKE:-}" ] && bench_steps=2
stamp "A: benchmark"
for model in sa_cnn vit; do  # one call each: a JSON is printed only when its call ends
  timeout 60 $py -m jax_attn.tools.bench --models=$model --against=torch --steps=$bench_steps --rounds=2 \
    --json > "$runs/bench_f32_$model.json"
done
timeout 40 $py -m jax_attn.tools.bench --models=sa_cnn --dtype=bfloat16 --steps=$bench_steps --rounds=2 \
  --json > "$runs/bench_bf16_sa_cnn.json"
cat "$runs"/bench_*.json

# B. The notebook's SA-CNN recipe alone on the GPU; phase C starts when it ends or at 5/9 of the budget.
stamp "B: the notebook's SA-CNN"
train sa_cnn_notebook --model=sa_cnn --recipe=notebook & seed_pid=$!
while kill -0 $seed_pid 2>/dev/null && [ $SECONDS -lt $(( budget * 5 / 9 )) ]; do sleep 2; done

# C. bn_adamw and one-factor variants (selection on train[:90%] / train[90%:] only).
stamp "C: bn_adamw runs"
bn_adamw="--config=experiments/recipes/sa_cnn.py:bn_adamw"
cct_adamw="--config=experiments/recipes/vit.py:cct_adamw"
train sa_cnn_bn_adamw $bn_adamw &
train sa_cnn_bn_adamw_wide $bn_adamw "--config.model.widths=(64,128,192)" \
  "--config.model.convs_per_stage=(2,2,1)" &
train sa_cnn_bn_adamw_b128 $bn_adamw --batch_size=128 --learning_rate=2e-3 &
train sa_cnn_bn_adamw_lr8e-3 $bn_adamw --learning_rate=8e-3 &
train sa_cnn_bn_adamw_wd5e-3 $bn_adamw --weight_decay=5e-3 &
train sa_cnn_bn_adamw_ls0 $bn_adamw --label_smoothing=0 &
train sa_cnn_notebook_bf16 --model=sa_cnn --recipe=notebook --dtype=bfloat16 &
train vit_cct_adamw $cct_adamw &
train vit_cct_adamw_lr3e-3 $cct_adamw --learning_rate=3e-3 &
finish sa_cnn_notebook sa_cnn_notebook_bf16 sa_cnn_bn_adamw sa_cnn_bn_adamw_wide vit_cct_adamw
