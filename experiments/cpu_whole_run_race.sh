#!/usr/bin/env bash
# The whole-run race of RESULTS.md: one SA-CNN recipe (default airbench_noattn, airbench93's
# network) trained whole (data, augmentation, per-epoch evaluation included) by JAX
# (python -m jax_attn.main) and by PyTorch (python -m jax_attn.tools.torch_airbench), in turn,
# ROUNDS times each, on the same CPU, data and split: one line per run in OUT/runs.jsonl.
# Needs torch==2.13.0. Usage: bash experiments/cpu_whole_run_race.sh [OUT] [ROUNDS]
# Environment: RECIPE, DATA_FLAGS (default --image_folder=../shared/data/cifar10-jpeg),
# EXTRA_FLAGS (given to both, e.g. "--epochs=1 --batch_size=64" for a rehearsal).
set -euo pipefail
out="${1:-experiments/results/cpu_whole_run_race}"
rounds="${2:-3}"
recipe="${RECIPE:-airbench_noattn}"
read -r -a data <<< "${DATA_FLAGS:---image_folder=../shared/data/cifar10-jpeg}"
read -r -a extra <<< "${EXTRA_FLAGS:-}"
mkdir -p "$out"
record() {  # framework round seconds accuracy
  echo "{\"framework\": \"$1\", \"round\": $2, \"wall_s\": $3, \"eval_accuracy\": $4}" \
    | tee -a "$out/runs.jsonl"
}
for round in $(seq "$rounds"); do
  start=$SECONDS
  python -m jax_attn.main --model=sa_cnn --recipe="$recipe" --seed="$round" "${data[@]}" \
    "${extra[@]}" --workdir="$out/jax_$round" > "$out/jax_$round.log" 2>&1
  record jax "$round" $((SECONDS - start)) \
    "$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["eval_accuracy"])' \
       "$out/jax_$round/summary.json")"
  start=$SECONDS
  python -m jax_attn.tools.torch_airbench --recipe="$recipe" --seed="$round" "${data[@]}" \
    "${extra[@]}" > "$out/torch_$round.log" 2>&1
  record pytorch "$round" $((SECONDS - start)) \
    "$(tail -n 1 "$out/torch_$round.log" | python -c 'import json,sys; print(json.load(sys.stdin)["eval_accuracy"])')"
done
