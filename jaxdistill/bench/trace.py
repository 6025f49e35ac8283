"""Profile a jitted call with jax.profiler and summarise where device time goes.

    rows, totals = trace.profile(lambda: jax.block_until_ready(f(x)), "traces/decode")
    trace.print_summary(rows, totals)

Reads the Chrome-format `*.trace.json.gz` the profiler exports, keeps the events of device
streams (GPU/TPU; on CPU the XLA thunks of the host threads), and totals them by name:
count, summed duration and share of all device time, plus how busy the device was over the
traced span (gaps are launch overhead and host round trips, e.g. while-loop predicates).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os


def profile(fn, log_dir: str, repeats: int = 1):
  """Run fn() `repeats` times under a profiler trace written to log_dir; summarise it."""
  import jax
  os.makedirs(log_dir, exist_ok=True)
  with jax.profiler.trace(log_dir):
    for _ in range(repeats):
      fn()
  return summarize(log_dir)


def _latest_trace(log_dir: str) -> str:
  paths = glob.glob(os.path.join(log_dir, "plugins", "profile", "*", "*.trace.json.gz"))
  if not paths:
    raise FileNotFoundError(f"no *.trace.json.gz under {log_dir}")
  return max(paths, key=os.path.getmtime)


def _busy(intervals):
  """Length of the union of [start, end) intervals."""
  total, end = 0.0, float("-inf")
  for start, stop in sorted(intervals):
    if stop <= end:
      continue
    total += stop - max(start, end)
    end = stop
  return total


def summarize(log_dir: str, top: int = 25):
  """(rows by total device time, totals) of the newest trace under log_dir."""
  with gzip.open(_latest_trace(log_dir), "rb") as f:
    events = json.load(f)["traceEvents"]
  processes = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  device_pids = {pid for pid, name in processes.items() if "/device:" in name}

  def is_device_op(e):
    if e["pid"] in device_pids:
      # device streams hold kernels; skip the per-module and per-op summary lines
      thread = threads.get((e["pid"], e["tid"]), "")
      return "Stream" in thread or "XLA Ops" in thread
    return False

  ops = [e for e in events if e.get("ph") == "X" and is_device_op(e)]
  if not ops:  # CPU: XLA's thunks run on host threads named after the client
    ops = [e for e in events if e.get("ph") == "X" and not e["name"].startswith(("$", "end: "))
           and "XLA" in threads.get((e["pid"], e["tid"]), "")]
  by_name = collections.defaultdict(lambda: [0, 0.0])
  for e in ops:
    by_name[e["name"]][0] += 1
    by_name[e["name"]][1] += e.get("dur", 0.0)
  total = sum(v[1] for v in by_name.values()) or 1.0
  rows = [{"op": name[:80], "count": count, "total_ms": dur / 1e3, "share": dur / total}
          for name, (count, dur) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[:top]]
  intervals = [(e["ts"], e["ts"] + e.get("dur", 0.0)) for e in ops]
  span = (max(b for _, b in intervals) - min(a for a, _ in intervals)) if intervals else 0.0
  totals = {"ops": len(ops), "distinct_ops": len(by_name), "device_ms": total / 1e3,
            "span_ms": span / 1e3, "busy_ms": _busy(intervals) / 1e3}
  totals["busy_share"] = totals["busy_ms"] / totals["span_ms"] if span else 0.0
  return rows, totals


def print_summary(rows, totals, title: str = "") -> None:
  """The table of the busiest ops and one line of totals."""
  from jaxdistill.bench.common import print_table
  if title:
    print(title)
  print_table(rows, ["op", "count", "total_ms", "share"])
  print(f"{totals['ops']} device ops ({totals['distinct_ops']} distinct), "
        f"{totals['device_ms']:.2f} ms of op time over a {totals['span_ms']:.2f} ms span, "
        f"device busy {100 * totals['busy_share']:.0f}% of it")
