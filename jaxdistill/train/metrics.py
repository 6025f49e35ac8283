"""Training metrics: JSONL log (resume-safe), optional TensorBoard, eval plot."""

from __future__ import annotations

import json
import math
import os

from jaxdistill.files import publish


def _clean(value):
  value = float(value) if hasattr(value, "__float__") else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN / inf
  return value


class MetricsLog:
  """Append-only `metrics.jsonl`. Opened for a run that starts at `resume_step` (0: from the
  beginning), rows past that step (written after the last checkpoint, so not in the state
  the run goes on from) are dropped, and the run says how many; the file is otherwise only
  appended to."""

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True,
               announce=print):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = enabled  # False on every process but the primary one (multi-host)
    self.writer = None
    if not enabled:
      return
    if os.path.exists(self.path):
      rows = [line for line in open(self.path) if line.strip()]
      # a fresh start keeps nothing: even its step-0 evaluation is written again
      kept = [line for line in rows if resume_step and
              json.loads(line).get("step", 0) <= resume_step]
      if len(kept) < len(rows):
        announce(f"metrics: dropped {len(rows) - len(kept)} row(s) of {self.path} after step "
                 f"{resume_step}, which no checkpoint holds")
        publish(self.path, lambda f: f.writelines(kept))
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


def plot_run(rows: list[dict], k: int, path: str) -> str | None:
  """PNG of a run: training reward per update (and its moving average) on the left;
  mean@k on the test problems (eval_) and on the validation problems (curve_, val_) against
  updates on the right. Returns the path, or None before there is anything to plot."""
  series = lambda key: [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
  reward = series("reward")
  scores = {"test": series(f"eval_mean@{k}"),
            "validation": sorted(series(f"curve_mean@{k}") + series(f"val_mean@{k}"))}
  if not reward and not any(scores.values()):
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
  if reward:
    steps, values = map(np.asarray, zip(*reward))
    left.plot(steps, values, color="C0", alpha=0.35, label="per update")
    width = max(1, len(values) // 8)
    if width > 1:
      smooth = np.convolve(values, np.ones(width) / width, mode="valid")
      left.plot(steps[width - 1:], smooth, color="C0", label=f"mean of {width}")
    left.legend()
  left.set_xlabel("update")
  left.set_ylabel("training reward")
  left.grid(alpha=0.3)
  for i, (name, points) in enumerate(scores.items()):
    if points:
      right.plot(*zip(*points), marker="o", color=f"C{i + 1}", label=name,
                 linestyle="-" if len(points) > 1 else "none")
  right.set_xlabel("update")
  right.set_ylabel(f"mean@{k}")
  right.grid(alpha=0.3)
  if any(scores.values()):
    right.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
