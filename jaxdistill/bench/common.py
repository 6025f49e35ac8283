"""Shared benchmark plumbing: machine description, timing, table, JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time


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
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump({"machine": machine(), **payload}, f, indent=2)
  print(f"wrote {path}")


def load_preset(spec: str):
  """countdown.py's preset of 'countdown.py:PRESET' (the only config file with presets; the
  file part is not read)."""
  from jaxdistill.configs import countdown
  preset = spec.split(":", 1)[1] if ":" in spec else ""
  return countdown.get_config(preset)
