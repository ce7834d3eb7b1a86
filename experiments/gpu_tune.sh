#!/usr/bin/env bash
# A device call (H100/H200; <= 8 minutes): 10-epoch runs of the best recipes on 3 seeds each
# (twelve runs), side by side, from the source tree (installs only the carried wheels the image
# lacks: gpu_common.sh).
#   sa_cnn airbench            whitened, early-pooled SA-CNN, SGD-Nesterov, lookahead,
#                              alternating flip, 6-view TTA
#   sa_cnn airbench_noattn     the same recipe without its two SAGAN layers, widths matched
#   vit    conv_tokens_local3  ViT on airbench's convolution trunk as the tokenizer, sequence
#                              pooling, a depth-wise 3x3 conv of the token grid in each block
#   vit    conv_tokens         the same with a 5x5 kernel
# Selection uses train[:45000] / train[45000:] only (the default split of the JPEG folder).
# Before the call, here: `bash experiments/gpu_prepare.sh` packs the data (.data; without it every
# run uses synthetic data) and the wheels the device image lacks (.whl); the call carries both.
# Usage on the device machine, from the repo root:   bash experiments/gpu_tune.sh "$OUT" [SECONDS]
# Rehearse on a CPU:  SMOKE=1 bash experiments/gpu_tune.sh /tmp/tune_smoke 900  (twelve 3-step
# runs of the real architectures at 16 px side by side: ~10 minutes on 2 cores)
source "$(dirname "$0")/gpu_common.sh" "$@"

stamp "the best recipes, 3 seeds each"
for seed in 0 1 2; do
  train sa_cnn_airbench_s$seed --model=sa_cnn --recipe=airbench --seed=$seed &
  train sa_cnn_noattn_s$seed --model=sa_cnn --recipe=airbench_noattn --seed=$seed &
  train vit_local3_s$seed --config=experiments/recipes/vit.py:conv_tokens_local3 --seed=$seed &
  train vit_conv_tokens_s$seed --model=vit --recipe=conv_tokens --seed=$seed &
done
finish sa_cnn_airbench_s0 vit_conv_tokens_s0
$py -m jax_attn.tools.report "$runs"/sa_cnn_* "$runs"/vit_* --out "$out/report" --images=1 \
  > /dev/null 2>&1 && stamp "report in $out/report"
