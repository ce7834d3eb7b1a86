#!/usr/bin/env bash
# The GPU-speed device call (H100/H200; <= 8 minutes), from the source tree (installs only the
# carried wheels the image lacks: gpu_common.sh). Phases, all bounded by one deadline, timing
# phases alone on the GPU:
#   A. the race: the notebook SA-CNN's train step against eager PyTorch (every row) and
#      torch.compile (the K = 20 rows), float32 and bf16, einsum and flash attention, K = 1 and
#      K = 20 steps per call; a profile of the einsum and the K = 20 step
#      (python -m jax_attn.tools.profile_table)
#   B. the notebook recipe's 10 epochs alone: float32 and bf16, with the fastest settings (flash;
#      einsum again if a flash run does not finish)
#   C. the bf16 NaN hunt: 10 bf16 runs of 300 steps side by side, each dumping XLA's autotuning
#      choices; if any goes NaN, up to three are replayed with their choices and JAX_DEBUG_NANS,
#      which names the first op that made a NaN, beside controls: deterministic ops, no
#      autotuning, no command buffers (CUDA graphs)
#   D. scaling: step time and peak memory at 32, 64 and 96 px, einsum against flash
# Then `python -m jax_attn.tools.speed_report` writes "$OUT"/speed_report.md (each phase against
# the GPU-speed targets) and "$OUT"/scaling.png.
# Before the call, here: `bash experiments/gpu_prepare.sh` packs the data (.data; without it phase B
# uses synthetic data) and the wheels the device image lacks (.whl); the call carries both.
# Usage on the device machine, from the repo root:   bash experiments/gpu_speed.sh "$OUT" [SECONDS]
# Rehearse on a CPU:  SMOKE=1 bash experiments/gpu_speed.sh /tmp/speed_smoke 1800 (524-848 s on 2 cores)
source "$(dirname "$0")/gpu_common.sh" "$@"

steps=20; rounds=2; nan_steps=300; control_steps=50; sizes="32 64 96"; recipe="--recipe=notebook"
k=20; slow=1
if [ -n "${SMOKE:-}" ]; then  # a 2-core CPU: tiny steps, longer limits (torch.compile alone ~30 s)
  steps=2; rounds=1; nan_steps=3; control_steps=3; sizes="16 24"; recipe="--recipe=notebook --image_size=16 --batch_size=8"
  k=2; slow=3
fi
bench() {  # NAME SECONDS ARGS...: one bench call, its JSON (or its error) kept
  local name="$1" limit=$(( $2 * slow )); shift 2
  timeout "$(( limit < $(left) ? limit : $(left) ))" $py -m jax_attn.tools.bench --models=sa_cnn $recipe \
    --steps=$steps --rounds=$rounds --json "$@" > "$runs/bench_$name.json" 2> "$runs/bench_$name.err"
  stamp "bench $name exited with $?: $(grep -o '"train_step_ms": [0-9.]*\|"speedup_train[a-z_]*": [0-9.]*\|"peak_memory_bytes": [0-9]*' "$runs/bench_$name.json" | tr '\n' ' ')$(tail -n 1 "$runs/bench_$name.err" | grep -i 'error\|memory' | cut -c1-160)"
}

stamp "A: the race (alone on the GPU)"
# Every row races eager PyTorch in its own process, and the many-steps rows (the candidates
# for the fastest step) torch.compile too: each ratio comes from one run. A flash row without a
# result (a kernel that fails to build under this jax, say) is followed by the same with einsum.
race_k() {  # DTYPE_NAME ARGS...: K steps per call, flash attention (einsum if flash gives nothing)
  local name="$1"; shift
  bench ${name}_flash_k$k 120 --attention_impl=flash --steps_per_call=$k --against=torch,torch_compile "$@"
  [ -s "$runs/bench_${name}_flash_k$k.json" ] ||
    bench ${name}_einsum_k$k 120 --steps_per_call=$k --against=torch,torch_compile "$@"
}
bench f32_einsum 90 --against=torch --profile="$runs/profile/f32_einsum"
race_k f32
bench bf16_einsum 60 --dtype=bfloat16 --against=torch
race_k bf16 --dtype=bfloat16 --profile="$runs/profile/bf16_k$k"
$py -m jax_attn.tools.profile_table "$runs/profile" > "$runs/profile_table.md" 2>&1
cat "$runs/profile_table.md"

stamp "B: the notebook recipe's 10 epochs, alone"
fast="--steps_per_call=50 --log_every_steps=100 --eval_every_epochs=10"
seed_fast() {  # NAME ARGS...: flash attention; if that run did not finish (a kernel that fails to
  # build under this jax, say), the same run with einsum attention, so the 10-epoch figure comes
  local name="$1"; shift
  train "$name" --model=sa_cnn --recipe=notebook $fast --attention_impl=flash "$@"
  [ -f "$runs/$name/summary.json" ] ||
    train "${name}_einsum" --model=sa_cnn --recipe=notebook $fast --attention_impl=einsum "$@"
}
seed_fast seed_f32_fast
seed_fast seed_bf16_fast --dtype=bfloat16

stamp "C: bf16 NaN hunt: 10 runs side by side; controls and replays if one goes NaN"
bf16_run() {  # NAME ARGS...: a short bf16 run of the notebook recipe
  local name="$1"; shift
  train "$name" --model=sa_cnn --recipe=notebook --dtype=bfloat16 --max_steps=$nan_steps "$@"
}
went_nan() { grep -q "became -\?\(nan\|inf\)\|non-finite\|FloatingPointError" "$runs/$1.log"; }
finished() { ls "$@" 2>/dev/null | xargs -rn1 dirname | xargs -rn1 basename | tr '\n' ' '; }
for i in $(seq 0 9); do
  XLA_FLAGS="--xla_gpu_dump_autotune_results_to=$runs/autotune_$i.textproto" \
    bf16_run nan_$i --seed=$i &
done
wait_runs
nans=$(for i in $(seq 0 9); do went_nan nan_$i && echo nan_$i; done | tr '\n' ' ')
stamp "C: $(finished "$runs"/nan_?/summary.json | wc -w) of 10 bf16 runs of $nan_steps steps" \
  "finished finite; went NaN: ${nans:-none}"
if [ -n "$nans" ]; then
  # Controls at seed 0, which went NaN at step 5 in two of five runs on the H100: if the NaN
  # comes from an algorithm the autotuner picks (timings are noisy with the GPU shared), it
  # never shows without autotuning; if from replaying the step as a CUDA graph, never without
  # command buffers.
  XLA_FLAGS="--xla_gpu_deterministic_ops=true" bf16_run nan_deterministic &
  for r in a b; do
    XLA_FLAGS="--xla_gpu_autotune_level=0" bf16_run nan_no_autotune_$r --max_steps=$control_steps &
    XLA_FLAGS="--xla_gpu_enable_command_buffer=" \
      bf16_run nan_no_cmdbuf_$r --max_steps=$control_steps &
  done
  replays=0
  for name in $nans; do  # replay up to three, each with its own autotuning choices
    [ $(( replays++ )) -lt 3 ] || break
    stamp "$name went NaN: replaying its autotuning choices under JAX_DEBUG_NANS"
    i=${name#nan_}
    JAX_DEBUG_NANS=True XLA_FLAGS="--xla_gpu_load_autotune_results_from=$runs/autotune_$i.textproto" \
      bf16_run ${name}_replay --seed=$i --log_every_steps=1 &
  done
  wait_runs
  for log in "$runs"/nan_*_replay.log; do  # the op JAX names, the last line of ours it ran
    echo "$(basename "$log"): $(grep -o 'FloatingPointError: .\{0,80\}' "$log" | head -n 1) at" \
      "$(grep -o 'jax_attn/[a-z_/]*\.py", line [0-9]*' "$log" | tail -n 1)$(grep -q \
      'de-optimized function did not' "$log" && echo '; op by op it stayed finite: a kernel')"
  done
  stamp "C: controls that finished finite:" \
    "$(finished "$runs"/nan_no_*/summary.json "$runs"/nan_deterministic/summary.json)"
fi

stamp "D: scaling with resolution (einsum against flash)"
for size in $sizes; do
  for impl in einsum flash; do
    bench scale_${size}px_$impl 40 --image_size=$size --attention_impl=$impl --steps=6 --rounds=1
  done
done
finish seed_f32_fast seed_f32_fast_einsum
# Every phase's figures against the GPU-speed targets, and the scaling plot
$py -m jax_attn.tools.speed_report "$runs" --plot="$out/scaling.png" > "$out/speed_report.md" 2>&1
cat "$out/speed_report.md"
