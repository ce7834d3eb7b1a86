"""Local multi-process launcher behind ``launch.sh``.

    ./launch.sh [--num_processes=N] [--coordinator=HOST:PORT] -- <jax_attn.main flags>

With N > 1, starts N processes of ``python -m jax_attn.main`` on this machine,
joined through ``jax.distributed`` (coordinator on 127.0.0.1 and a free port
unless given), prefixes their output with ``[pN]``, and if one fails stops the
others and exits non-zero. Without N it runs the main program once.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from jax_attn.train import distributed

USAGE = "usage: launch.sh [--num_processes=N] [--coordinator=HOST:PORT] -- <jax_attn.main flags>"
GRACE_SECONDS = 10.0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _parse(argv: list[str]) -> tuple[int | None, str | None, list[str]]:
  num, coordinator, rest = None, None, list(argv)
  while rest and rest[0] != "--":
    arg = rest.pop(0)
    key, _, value = arg.partition("=")
    if key == "--num_processes" and value.isdigit() and int(value) >= 1:
      num = int(value)
    elif key == "--coordinator" and ":" in value:
      coordinator = value
    else:
      raise SystemExit(f"launch: cannot use {arg!r}\n{USAGE}")
  return num, coordinator, rest[1:] if rest else []


def _pump(stream, prefix: str) -> None:
  for line in iter(stream.readline, b""):
    sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
    sys.stdout.flush()


def _stop(procs: list[subprocess.Popen]) -> None:
  """SIGTERM every live worker's process group, then SIGKILL what is left after a grace period."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for proc in procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, sig)
        except ProcessLookupError:
          pass
    deadline = time.time() + GRACE_SECONDS
    while time.time() < deadline and any(p.poll() is None for p in procs):
      time.sleep(0.1)


def run(num: int, coordinator: str | None, main_args: list[str]) -> int:
  coordinator = coordinator or f"127.0.0.1:{_free_port()}"
  procs, pumps = [], []
  for pid in range(num):
    env = dict(os.environ, **{distributed.ENV_COORDINATOR: coordinator,
                              distributed.ENV_NUM_PROCESSES: str(num),
                              distributed.ENV_PROCESS_ID: str(pid)})
    proc = subprocess.Popen([sys.executable, "-m", "jax_attn.main", *main_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    procs.append(proc)
    print(f"[launch] process {pid}: pid {proc.pid}, coordinator {coordinator}", flush=True)
    pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{pid}]"), daemon=True)
    pump.start()
    pumps.append(pump)
  previous = {s: signal.signal(s, lambda *_: _stop(procs)) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        print(f"[launch] error: process {i} exited with code {code}; stopping the others",
              flush=True)
        _stop(procs)
        return code if code > 0 else 1
      if all(c == 0 for c in codes):
        return 0
      time.sleep(0.2)
  finally:
    for pump in pumps:
      pump.join(timeout=5)
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def main(argv: list[str]) -> int:
  num, coordinator, main_args = _parse(argv)
  if num is None or num == 1 and coordinator is None:
    return subprocess.call([sys.executable, "-m", "jax_attn.main", *main_args])
  return run(num, coordinator, main_args)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
