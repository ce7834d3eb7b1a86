# Sourced by the device scripts (gpu_bench.sh, gpu_followup.sh, gpu_tune.sh, gpu_speed.sh): one
# deadline for every run, results packed as they appear (so a call cut off at its limit still
# returns them).
# Usage: source experiments/gpu_common.sh OUT_DIR [SECONDS]
set -uo pipefail
out="${1:?usage: SCRIPT OUT_DIR [SECONDS]}"
budget="${2:-540}"                # training stops by then; packing the results follows
runs="${RUNS_DIR:-/tmp/gpu_runs}"
mkdir -p "$out" "$runs"
exec > >(tee -a "$out/session.log") 2>&1
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
py="${PYTHON:-python3}"
left() { local l=$(( budget - SECONDS )); echo $(( l > 1 ? l : 1 )); }  # timeout 0 = none
stamp() { echo "[$(date +%T) +${SECONDS}s] $*"; }

# The device image's packages are not our pins: a package our code imports that the image lacks
# (ml_collections, on the H200 image) travels as a wheel in .whl (experiments/gpu_prepare.sh) and
# is installed only where the project does not import without it. Still failing, the call stops
# here with the reason instead of spending its minutes on runs that all fail the same way.
import_error() {  # the last line of the error importing what main runs (bench's modules are among
  # them; importing main and bench together would define their flags twice); nothing if it imports
  local err; err=$($py -c "import jax_attn.main, jax_attn.tools.speed_report" 2>&1) \
    || echo "$err" | tail -n 1
}
error=$(import_error)
if [ -n "$error" ] && compgen -G ".whl/*.whl" > /dev/null; then
  site="${TMPDIR:-/tmp}/jax_attn_site"
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .whl/*.whl && export PYTHONPATH="$PYTHONPATH:$site" && stamp "installed $(ls .whl) into $site"
  error=$(import_error)
fi
if [ -n "$error" ]; then
  stamp "error: the project does not import with $py: $error. Carry the missing package's wheel in .whl (bash experiments/gpu_prepare.sh here, then carry [\".data\", \".whl\"])."
  exit 1
fi

# Settings to rehearse a script on a CPU (SMOKE=1): same commands and the recipes' own
# architectures (whitening, the ViT's airbench tokenizer, attention layers), a few small steps on
# 16 px synthetic images, so that twelve runs fit 2 CPU cores. A rehearsal leaves the archive
# packed: 46 MB of extracted images in .data would no longer fit the 64 MiB a device call carries.
smoke=""; data="--synthetic --synthetic_size=1024"
if [ -n "${SMOKE:-}" ]; then
  data="--synthetic --synthetic_size=500"
  smoke="--max_steps=3 --image_size=16 --batch_size=50"
else
  if [ -f .data/cifar10-jpeg.tgz ] && [ ! -d .data/cifar10-jpeg/train ]; then
    tar xzf .data/cifar10-jpeg.tgz -C .data
  fi
  data="--image_folder=.data/cifar10-jpeg"
  [ -d .data/cifar10-jpeg/train ] || data="--synthetic --synthetic_size=50000"
fi

pack() {  # atomically: a tarball cut off half-written never replaces the last good one
  tar czf "$out/runs.tgz.part" --exclude=checkpoints -C "$runs" . 2>/dev/null \
    && mv "$out/runs.tgz.part" "$out/runs.tgz"
}
(while sleep 20; do pack; done) & packer=$!

stamp "start: data=$data"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$runs/gpu.txt"
$py -c "
import importlib.metadata as m, jax
def version(p):
  try: return m.version(p)
  except m.PackageNotFoundError: return 'absent'
print(jax.devices(), *(f'{p} {version(p)}' for p in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'chex', 'ml_collections', 'numpy', 'torch')))"

train() {  # NAME ARGS...: one run (later flags win), stopped at the deadline; it checkpoints as it goes
  local name="$1"; shift
  timeout "$(left)" $py -m jax_attn.main $data $smoke --workdir="$runs/$name" \
    --keep_checkpoints=1 --checkpoint_every_steps=1000 --log_every_steps=100 "$@" \
    > "$runs/$name.log" 2>&1
  stamp "$name exited with $?: $(tail -n 2 "$runs/$name.log" | tr '\n' ' ')"
}

wait_runs() {  # waits for every run started with `&` (a bare `wait` would wait for the packer)
  local pids; pids=$(jobs -p | grep -v "^$packer$")
  [ -z "$pids" ] || wait $pids
}

finish() {  # RUN...: waits for every job, lists the summaries, packs; checkpoints of the RUNs named
  wait_runs
  kill $packer 2>/dev/null
  stamp "all runs ended"
  $py - "$runs" <<'PYEOF'
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1]).iterdir()  # training runs (a bench --profile folder is none)
for d in sorted(p for p in runs if (p / "config.json").exists() or (p / "summary.json").exists()):
  s = d / "summary.json"
  if s.exists():
    r = json.loads(s.read_text())
    print(f"{d.name:22s} acc {r['eval_accuracy']:.4f} (no flip {r.get('eval_accuracy_no_flip')}) "
          f"loss {r['eval_loss']:.4f} params {r['params']:,} steps {r['steps']} "
          f"train {r['train_wall_s']:.1f}s {r['train_images_per_sec']:.0f} img/s {r['device_kind']}")
  else:
    print(f"{d.name:22s} no summary.json (did not finish)")
PYEOF
  pack
  local name
  for name in "$@"; do  # at most 8 files come back: name at most 5
    [ -d "$runs/$name/checkpoints" ] && tar czf "$out/ckpt_$name.tgz" -C "$runs" "$name/checkpoints"
  done
  ls -la "$out"
  stamp "done"
}
