#!/usr/bin/env bash
# A device call (~5 minutes) that recorded gpu_bf16_nan/ and the rest of gpu_grid/ (RESULTS.md):
# (1) where the notebook SA-CNN's bf16 loss goes NaN on the GPU (not on the CPU): eight logged
# steps each of float32, bf16 under JAX_DEBUG_NANS (names the first primitive that makes a NaN),
# bf16 with the chunked attention path and bf16 with gradient clipping; (2) bn_adamw's best two
# settings of gpu_bench.sh again with another seed, and the next steps along them.
# Usage on the device machine, from the repo root:   bash experiments/gpu_followup.sh "$OUT" [SECONDS]
source "$(dirname "$0")/gpu_common.sh" "$@"

steps="--max_steps=8 --log_every_steps=1 --checkpoint_every_steps=100"
seed_sa_cnn="--model=sa_cnn --recipe=notebook"
train bf16_nan_f32 $seed_sa_cnn $steps &
(export JAX_DEBUG_NANS=True; train bf16_nan_debug $seed_sa_cnn $steps --dtype=bfloat16) &
train bf16_nan_chunked $seed_sa_cnn $steps --dtype=bfloat16 --attention_impl=chunked &
train bf16_nan_clip $seed_sa_cnn $steps --dtype=bfloat16 --grad_clip_norm=1.0 &

bn_adamw="--config=experiments/recipes/sa_cnn.py:bn_adamw"
train sa_cnn_bn_adamw_seed1 $bn_adamw --seed=1 &
train sa_cnn_bn_adamw_lr8e-3_seed1 $bn_adamw --learning_rate=8e-3 --seed=1 &
train sa_cnn_bn_adamw_b128_lr4e-3 $bn_adamw --batch_size=128 --learning_rate=4e-3 &
train sa_cnn_bn_adamw_lr1.2e-2 $bn_adamw --learning_rate=1.2e-2 &
train vit_cct_adamw_b256_lr4e-3 --config=experiments/recipes/vit.py:cct_adamw --batch_size=256 \
  --learning_rate=4e-3 &
finish sa_cnn_bn_adamw_lr8e-3_seed1 sa_cnn_bn_adamw_b128_lr4e-3 sa_cnn_bn_adamw_lr1.2e-2
