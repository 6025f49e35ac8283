"""Training metrics: JSONL log (resume-safe), optional TensorBoard, eval plot."""

from __future__ import annotations

import json
import math
import os


def _clean(value):
  value = float(value) if hasattr(value, "__float__") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN / inf
  return value


class MetricsLog:
  """Append-only `metrics.jsonl`; on resume, rows past the restored step are dropped."""

  def __init__(self, workdir: str, resume_step: int | None = None, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled  # False on every process but the primary one (multi-host)
    self.writer = None
    if not enabled:
      return
    if resume_step is not None and os.path.exists(self.path):
      kept = [line for line in open(self.path) if line.strip() and
              json.loads(line).get("step", 0) <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    elif resume_step is None and os.path.exists(self.path):
      os.remove(self.path)
    try:  # TensorBoard only when installed: pip install -e ".[tensorboard]"
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      pass

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)} | {k: _clean(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.writer is not None:
      for key, value in row.items():
        if isinstance(value, (int, float)):
          self.writer.add_scalar(key, value, step)

  def rows(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    return [json.loads(line) for line in open(self.path) if line.strip()]


def plot_eval(rows: list[dict], key: str, path: str) -> str | None:
  """PNG of `key` against update step for rows that have it; returns the path."""
  points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
  if not points:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(*zip(*points), marker="o")
  ax.set_xlabel("update")
  ax.set_ylabel(key)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
