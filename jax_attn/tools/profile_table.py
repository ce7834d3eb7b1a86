"""Where a traced step's time went: ``python -m jax_attn.tools.profile_table DIR [--steps=N]``.

Reads the Perfetto traces that ``jax.profiler.trace(..., create_perfetto_trace=True)`` wrote
under DIR (``bench --profile=DIR``) and prints, per trace, a markdown table of device time per
step by kind of kernel, then the slowest kernels. Device time is the GPU's (or TPU's) own
timeline when the trace has one, else the XLA:CPU thunks of the host. Hand-written because
TensorBoard's profile plugin needs TensorFlow, which the GPU image lacks.
"""
from __future__ import annotations

import collections
import gzip
import json
import re
import sys
from pathlib import Path

# First match wins: kernel name pattern -> kind.
KINDS = (
    ("attention kernel", r"mha|flash|attention|fmha|sdpa"),
    ("dot / conv (YNNPACK, CPU)", r"ynn_fusion"),
    ("convolution", r"conv(?!ert)|cudnn|implicit_gemm|winograd|fft"),
    ("matmul", r"gemm|cublas|dot|matmul|sm\d+_xmma|cutlass"),
    ("copy / transpose", r"memcpy|memset|copy|transpose"),
    ("reduction", r"reduce|softmax"),
    ("fused elementwise", r"fusion|loop_|elementwise|add|multiply|select"),
)
_HOST_WRAPPERS = re.compile(r"^\$|Thunk|PjitFunction|Execute|ParseArguments|PjRt|Pjit")


def kind_of(name: str) -> str:
  lowered = name.lower()
  return next((kind for kind, pattern in KINDS if re.search(pattern, lowered)), "other")


def kernel_times(trace: dict) -> dict[str, float]:
  """Microseconds per kernel name on the device timeline (the host's XLA thunks on a CPU)."""
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in processes.items() if re.search(r"/device:(GPU|TPU)", name)}
  # A GPU process also has derived tracks (XLA Modules, XLA Ops, Steps) over the same time:
  # count the kernels on its streams only, when the trace names them.
  streams = {(e["pid"], e.get("tid")) for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name" and e["pid"] in devices
             and str(e["args"].get("name", "")).startswith("Stream")}
  times: dict[str, float] = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    if streams:
      on_device = (e["pid"], e.get("tid")) in streams
    else:
      on_device = e["pid"] in devices if devices else not _HOST_WRAPPERS.search(e["name"])
    if on_device:
      times[e["name"]] += float(e.get("dur", 0.0))
  return times


def table(times: dict[str, float], steps: int, top: int = 10) -> str:
  total = sum(times.values()) or 1.0
  kinds: dict[str, float] = collections.Counter()
  for name, us in times.items():
    kinds[kind_of(name)] += us
  lines = ["| kind | ms per step | share |", "|---|---|---|"]
  lines += [f"| {k} | {us / steps / 1e3:.3f} | {us / total:.1%} |"
            for k, us in sorted(kinds.items(), key=lambda kv: -kv[1])]
  lines += [f"| **total** | **{total / steps / 1e3:.3f}** | 100% |", "",
            "| slowest kernels | kind | ms per step | share |", "|---|---|---|---|"]
  lines += [f"| `{name[:60]}` | {kind_of(name)} | {us / steps / 1e3:.3f} | {us / total:.1%} |"
            for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:top]]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  args = [a for a in argv[1:] if not a.startswith("--steps=")]
  given = next((int(a.split("=", 1)[1]) for a in argv[1:] if a.startswith("--steps=")), None)
  if len(args) != 1 or not Path(args[0]).is_dir():
    print("usage: python -m jax_attn.tools.profile_table DIR [--steps=5]  (DIR: bench --profile's)",
          file=sys.stderr)
    return 2
  traces = sorted(Path(args[0]).rglob("perfetto_trace.json.gz"))
  if not traces:
    print(f"jax_attn: error: no perfetto_trace.json.gz under {args[0]}: run the bench with "
          "--profile=DIR first", file=sys.stderr)
    return 2
  for path in traces:
    with gzip.open(path) as f:
      times = kernel_times(json.load(f))
    traced_dir = path.parents[3]  # DIR/.../MODEL/plugins/profile/RUN/perfetto_trace.json.gz
    name = traced_dir.relative_to(args[0]).as_posix()
    recorded = traced_dir / "steps.txt"  # written by bench --profile
    steps = given or (int(recorded.read_text()) if recorded.exists() else 5)
    print(f"### {name} ({steps} steps traced)\n")
    print(table(times, steps) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
