#!/usr/bin/env bash
# Device call 2 (~5 minutes), after gpu_bench.sh: (1) why the bf16 seed SA-CNN's loss became NaN
# at step 5 on the GPU (not on the CPU): eight logged steps each of float32, bf16 under
# JAX_DEBUG_NANS (names the first primitive that makes a NaN), bf16 with the fused and chunked
# attention paths and bf16 with gradient clipping; (2) a second round of tuned SA-CNN runs: the
# best two settings of round one again with another seed, and the next steps along them.
# Usage on the device machine, from the repo root:   bash experiments/gpu_followup.sh "$OUT" [SECONDS]
source "$(dirname "$0")/gpu_common.sh" "$@"

steps="--max_steps=8 --log_every_steps=1 --checkpoint_every_steps=100"
seed_sa_cnn="--model=sa_cnn --recipe=seed"
train bf16_nan_f32 $seed_sa_cnn $steps &
(export JAX_DEBUG_NANS=True; train bf16_nan_debug $seed_sa_cnn $steps --dtype=bfloat16) &
train bf16_nan_fused $seed_sa_cnn $steps --dtype=bfloat16 --attention_impl=fused &
train bf16_nan_chunked $seed_sa_cnn $steps --dtype=bfloat16 --attention_impl=chunked &
train bf16_nan_clip $seed_sa_cnn $steps --dtype=bfloat16 --grad_clip_norm=1.0 &

train sa_cnn_tuned_seed1 --model=sa_cnn --recipe=tuned_v1 --seed=1 &
train sa_cnn_tuned_lr8e-3_seed1 --model=sa_cnn --recipe=tuned_v1 --learning_rate=8e-3 --seed=1 &
train sa_cnn_tuned_b128_lr4e-3 --model=sa_cnn --recipe=tuned_v1 --batch_size=128 --learning_rate=4e-3 &
train sa_cnn_tuned_lr1.2e-2 --model=sa_cnn --recipe=tuned_v1 --learning_rate=1.2e-2 &
train vit_tuned_b256_lr4e-3 --model=vit --recipe=tuned_v1 --batch_size=256 --learning_rate=4e-3 &
finish sa_cnn_tuned_lr8e-3_seed1 sa_cnn_tuned_b128_lr4e-3 sa_cnn_tuned_lr1.2e-2
