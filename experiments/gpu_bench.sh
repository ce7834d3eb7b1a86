#!/usr/bin/env bash
# One prepared call on the device machine (H100/H200; ~9 minutes): installs nothing, runs the
# project from the source tree (the image has jax with CUDA, flax, optax, orbax, chex, absl,
# Pillow, torch; no TF/tfds). Three phases, all bounded by one deadline:
#   A. the benchmark race against the PyTorch reference (alone on the GPU),
#   B. the notebook's SA-CNN recipe, 10 epochs on real data (alone on the GPU: its wall time counts),
#   C. the tuned recipes and one-factor variants of them, 10 epochs each, side by side.
# Real data: here, `mkdir -p .data && tar czf .data/cifar10-jpeg.tgz -C ../shared/data cifar10-jpeg`,
# then the device call carries ".data". Without it every run uses synthetic data.
# Usage on the device machine, from the repo root:   bash experiments/gpu_bench.sh "$OUT" [SECONDS]
# What comes back: OUT/session.log (everything printed), OUT/runs.tgz (every run's config,
# metrics, summary and log, and the benchmark JSON), OUT/ckpt_*.tgz (final checkpoints).
set -uo pipefail
out="${1:?usage: gpu_bench.sh OUT_DIR [SECONDS]}"
budget="${2:-540}"                # training stops by then; packing the results follows
runs="${RUNS_DIR:-/tmp/gpu_runs}"
mkdir -p "$out" "$runs"
exec > >(tee -a "$out/session.log") 2>&1
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
py="${PYTHON:-python3}"
left() { local l=$(( budget - SECONDS )); echo $(( l > 1 ? l : 1 )); }  # timeout 0 = none
stamp() { echo "[$(date +%T) +${SECONDS}s] $*"; }

if [ -f .data/cifar10-jpeg.tgz ] && [ ! -d .data/cifar10-jpeg/train ]; then
  tar xzf .data/cifar10-jpeg.tgz -C .data
fi
data="--image_folder=.data/cifar10-jpeg"
[ -d .data/cifar10-jpeg/train ] || data="--synthetic --synthetic_size=50000"
# Tiny settings to rehearse this script on a CPU (SMOKE=1): same commands, a few steps each.
smoke=""; [ -n "${SMOKE:-}" ] && smoke="--max_steps=3 --preset=tiny"
[ -n "${SMOKE:-}" ] && data="--synthetic --synthetic_size=1024"

pack() {  # atomically, so a run cut off at the deadline still returns what it wrote
  tar czf "$out/runs.tgz.part" --exclude=checkpoints -C "$runs" . 2>/dev/null \
    && mv "$out/runs.tgz.part" "$out/runs.tgz"
}
(while sleep 20; do pack; done) & packer=$!

stamp "start: data=$data"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$runs/gpu.txt"
$py -c "import importlib.metadata as m, jax; print(jax.devices(), *(f'{p} {m.version(p)}' for p in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'chex', 'numpy', 'torch')))"

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

train() {  # NAME ARGS...: one 10-epoch run, stopped at the deadline (it checkpoints as it goes)
  local name="$1"; shift
  timeout "$(left)" $py -m jax_attn.main "$@" $data $smoke --workdir="$runs/$name" \
    --keep_checkpoints=1 --checkpoint_every_steps=1000 --log_every_steps=100 \
    > "$runs/$name.log" 2>&1
  stamp "$name exited with $?: $(tail -n 2 "$runs/$name.log" | tr '\n' ' ')"
}

# B. The notebook's SA-CNN recipe alone on the GPU; phase C starts when it ends or at 300 s.
stamp "B: seed SA-CNN"
train sa_cnn_seed --model=sa_cnn --recipe=seed & seed_pid=$!
while kill -0 $seed_pid 2>/dev/null && [ $SECONDS -lt $(( budget * 5 / 9 )) ]; do sleep 2; done

# C. Tuned recipes and one-factor variants (selection on train[:90%] / train[90%:] only).
stamp "C: tuned runs"
train sa_cnn_tuned --model=sa_cnn --recipe=tuned &
train sa_cnn_tuned_wide --model=sa_cnn --recipe=tuned "--model_arg=widths=(64,128,192)" \
  "--model_arg=convs_per_stage=(2,2,1)" &
train sa_cnn_tuned_b128 --model=sa_cnn --recipe=tuned --batch_size=128 --learning_rate=2e-3 &
train sa_cnn_tuned_lr8e-3 --model=sa_cnn --recipe=tuned --learning_rate=8e-3 &
train sa_cnn_tuned_wd5e-3 --model=sa_cnn --recipe=tuned --weight_decay=5e-3 &
train sa_cnn_tuned_ls0 --model=sa_cnn --recipe=tuned --label_smoothing=0 &
train sa_cnn_seed_bf16 --model=sa_cnn --recipe=seed --dtype=bfloat16 &
train vit_tuned --model=vit --recipe=tuned &
train vit_tuned_lr3e-3 --model=vit --recipe=tuned --learning_rate=3e-3 &
wait $(jobs -p | grep -v "^$packer$")
kill $packer 2>/dev/null
stamp "all runs ended"

# Results: summaries next to each other, then everything packed.
$py - "$runs" <<'EOF'
import json, pathlib, sys
for d in sorted(p for p in pathlib.Path(sys.argv[1]).iterdir() if p.is_dir()):
  s = d / "summary.json"
  if s.exists():
    r = json.loads(s.read_text())
    print(f"{d.name:22s} acc {r['eval_accuracy']:.4f} (no flip {r.get('eval_accuracy_no_flip')}) "
          f"loss {r['eval_loss']:.4f} params {r['params']:,} steps {r['steps']} "
          f"train {r['train_wall_s']:.1f}s {r['train_images_per_sec']:.0f} img/s {r['device_kind']}")
  else:
    print(f"{d.name:22s} no summary.json (did not finish)")
EOF
pack
for name in sa_cnn_seed sa_cnn_seed_bf16 sa_cnn_tuned sa_cnn_tuned_wide vit_tuned; do  # <= 8 files back
  [ -d "$runs/$name/checkpoints" ] && tar czf "$out/ckpt_$name.tgz" -C "$runs" "$name/checkpoints"
done
ls -la "$out"
stamp "done"
