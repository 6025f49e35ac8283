"""Shared benchmark plumbing: machine description, timing, table, JSON."""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time

from jaxdistill import files


def machine() -> dict:
  """What the numbers were measured on."""
  import jax
  devices = jax.devices()
  return {"platform": devices[0].platform, "device": devices[0].device_kind,
          "device_count": len(devices), "cpu_count": os.cpu_count(),
          "processor": platform.processor() or platform.machine(), "jax": jax.__version__,
          "python": platform.python_version(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def best_time(fn, repeats: int = 3) -> float:
  """Best wall time of `fn()` over `repeats` calls (fn must block until done)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def print_table(rows: list[dict], columns: list[str]) -> None:
  """Plain fixed-width table of the given columns."""
  fmt = lambda v: f"{v:,.3g}" if isinstance(v, float) else str(v)
  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  for row in cells:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(path: str, payload: dict) -> None:
  """Write the results with the machine description."""
  files.write_json(path, {"machine": machine(), **payload}, indent=2)
  print(f"wrote {path}")


def load_preset(spec: str):
  """countdown.py's preset of 'countdown.py:PRESET' (the only config file with presets; the
  file part is not read)."""
  from jaxdistill.configs import countdown
  preset = spec.split(":", 1)[1] if ":" in spec else ""
  return countdown.get_config(preset)


def ensure_cpu_devices(count: int, module: str) -> None:
  """Re-run `python -m module` with the same arguments on `count` fake CPU devices when
  fewer devices exist (they can only be made at start-up); a UsageError where that cannot
  help (not a CPU backend, or already the re-run child)."""
  import jax
  from absl import app
  if jax.device_count() >= count:
    return
  child = "_JAXDISTILL_CPU_DEVICES_CHILD"
  if jax.default_backend() != "cpu" or os.environ.get(child):
    raise app.UsageError(f"--devices={count}: only {jax.device_count()} "
                         f"{jax.default_backend()} devices here")
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{child: "1"},
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={count}").strip())
  os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
