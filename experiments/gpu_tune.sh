#!/usr/bin/env bash
# Device call for the tuned-recipe issue (H100/H200; <= 8 minutes): 10-epoch runs of the new
# recipes on 3 seeds each (twelve runs), side by side, from the source tree (installs only the
# carried wheels the image lacks: gpu_common.sh).
#   sa_cnn tuned_v2          whitened, early-pooled SA-CNN, SGD-Nesterov, lookahead, alternating
#                            flip, 6-view TTA (Muon, tuned_v2_muon, and airbench's pool order on
#                            top, tuned_v3, changed nothing measurable on the CPU: the simplest)
#   sa_cnn tuned_v2_noattn   the same recipe without its two SAGAN layers, widths matched (+-2 %)
#   vit    tuned_v4      ViT on airbench's convolution trunk as the tokenizer (tuned_v3), sequence
#                        pooling, the same augmentation, lookahead, TTA, and a depth-wise 3x3 conv
#                        of the token grid in each block (tuned_v3, without it, is 0.8 points lower)
#   vit    tuned_v5      tuned_v4 with a 5x5 kernel: the ViT's tuned since session 17
# Selection uses train[:45000] / train[45000:] only (the default split of the JPEG folder).
# Before the call, here: `bash experiments/gpu_prepare.sh` packs the data (.data; without it every
# run uses synthetic data) and the wheels the device image lacks (.whl); the call carries both.
# Usage on the device machine, from the repo root:   bash experiments/gpu_tune.sh "$OUT" [SECONDS]
# Rehearse on a CPU:  SMOKE=1 bash experiments/gpu_tune.sh /tmp/tune_smoke 900  (twelve 3-step
# runs of the real architectures at 16 px side by side: ~10 minutes on 2 cores)
source "$(dirname "$0")/gpu_common.sh" "$@"

stamp "tuned recipes, 3 seeds each"
for seed in 0 1 2; do
  train sa_cnn_v2_s$seed --model=sa_cnn --recipe=tuned_v2 --seed=$seed &
  train sa_cnn_v2_noattn_s$seed --model=sa_cnn --recipe=tuned_v2_noattn --seed=$seed &
  train vit_v4_s$seed --model=vit --recipe=tuned_v4 --seed=$seed &
  train vit_v5_s$seed --model=vit --recipe=tuned_v5 --seed=$seed &
done
finish sa_cnn_v2_s0 vit_v4_s0
$py -m jax_attn.report "$runs"/sa_cnn_v* "$runs"/vit_v* --out "$out/report" --images=1 \
  > /dev/null 2>&1 && stamp "report in $out/report"
