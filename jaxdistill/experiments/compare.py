"""Compare base, mcts_distill, cispo and best_of_n at an equal budget of generated tokens.

    python -m jaxdistill.experiments.compare            # tiny preset, seeds 0 and 1

Every method starts from the same base model (one warm start, shared), trains with the same
learner until it has sampled `--token_budget` tokens (or its iteration cap), and is scored by
mean@k on the held-out split without search. Each run is a normal `jaxdistill.main` job in
`WORKDIR/<method>-seed<s>` (resumable: finished runs are not repeated). Writes the table to
`--out` (markdown), the raw numbers next to it (JSON) and a plot of mean@k against generated
tokens (PNG).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

METHODS = ("mcts_distill", "cispo", "best_of_n")


def define_flags():
  """Command-line flags (defined only when run as a program: importing this module for
  its functions must not clash with the flags of other absl programs)."""
  flags.DEFINE_string("preset", "tiny", "config preset (configs/countdown.py)")
  flags.DEFINE_list("methods", ["base", *METHODS], "base and training methods to compare")
  flags.DEFINE_list("seeds", ["0", "1"], "RL seeds (the base model is the same for all)")
  flags.DEFINE_integer("token_budget", 0, "generated tokens per training run; 0: what the "
                       "preset's mcts_distill run generates (measured by running it first)")
  flags.DEFINE_float("completion_tokens", 0.0, "expected tokens per sampled completion, to "
                     "size cispo / best_of_n runs; 0: measured on the first mcts_distill run")
  flags.DEFINE_string("workdir", "runs/compare", "where runs go")
  flags.DEFINE_string("out", "results/countdown_tiny.md", "markdown table (JSON and PNG beside)")
  flags.DEFINE_multi_string("set", [], "extra config overrides for every run, e.g. "
                            "--set=search.num_agents=8")


FLAGS = flags.FLAGS


def _metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def _run(workdir: str, overrides: list[str], mode: str = "train") -> float:
  """One jaxdistill.main job; returns its wall time in seconds."""
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config",
         f"countdown.py:{FLAGS.preset}", f"--workdir={workdir}", f"--mode={mode}",
         *[f"--config.{o}" for o in overrides + FLAGS.set]]
  print("$", " ".join(cmd), flush=True)
  started = time.perf_counter()
  result = subprocess.run(cmd)
  if result.returncode:
    raise SystemExit(f"run failed (exit {result.returncode}): {' '.join(cmd)}")
  return time.perf_counter() - started


def _done(workdir: str) -> dict | None:
  """The record of a finished run (written last, so its presence means finished)."""
  path = os.path.join(workdir, "compare_run.json")
  return json.load(open(path)) if os.path.exists(path) else None


def iteration_overrides(config, method: str, budget: int, completion_tokens: float) -> list:
  """Iteration cap and learning-rate decay so a method spends `budget` tokens in about the
  expected number of updates: decay_steps = budget / (expected tokens per iteration), the
  cap 25% above it (the budget, not the cap, should end the run)."""
  if method == "mcts_distill" or not budget:
    expected = config.train.num_iterations
  else:
    samples = config.rollout.group_size if method == "cispo" else config.rollout.best_of
    per_iteration = config.train.prompts_per_iteration * samples * completion_tokens
    expected = max(1, round(budget / per_iteration))
  return [f"learner.decay_steps={expected}",
          f"train.num_iterations={int(np.ceil(1.25 * expected))}"]


def run_method(method: str, seed: int, budget: int, common: list[str]) -> dict:
  workdir = os.path.join(FLAGS.workdir, f"{method}-seed{seed}")
  record = _done(workdir)
  if record is not None:
    return record
  overrides = common + [f"seed={seed}"]
  if method == "base":  # the shared warm start, scored with this seed's samples
    wall = _run(workdir, overrides, mode="eval")
    rows = _metrics(workdir)
    result = json.load(open(os.path.join(workdir, "eval_result.json")))
    record = {"method": method, "seed": seed, "generated_tokens": 0, "iterations": 0,
              "wall_s": wall, "score": result}
  else:
    overrides += [f"algo={method}", f"train.token_budget={budget}", "eval.at_start=False",
                  "eval.every=1000000"]
    wall = _run(workdir, overrides)
    rows = _metrics(workdir)
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval_mean@") for k in r)]
    if not evals:
      raise SystemExit(f"{workdir}: no evaluation row in metrics.jsonl")
    score = {k[len("eval_"):]: v for k, v in evals[-1].items() if k.startswith("eval_")}
    record = {"method": method, "seed": seed, "iterations": len(train_rows),
              "generated_tokens": int(sum(r["generated_tokens"] for r in train_rows)),
              "train_s": float(train_rows[-1]["elapsed_s"]) if train_rows else 0.0,
              "wall_s": wall, "score": score,
              "curve": [(int(sum(r["generated_tokens"] for r in train_rows[:i + 1])),
                         r.get("solved", 0.0)) for i, r in enumerate(train_rows)]}
  with open(os.path.join(workdir, "compare_run.json"), "w") as f:
    json.dump(record, f)
  return record


def summarize(records: list[dict], k: int) -> list[dict]:
  """One row per method: mean and spread of mean@k over seeds, tokens and time."""
  rows = []
  for method in dict.fromkeys(r["method"] for r in records):
    mine = [r for r in records if r["method"] == method]
    scores = np.array([r["score"][f"mean@{k}"] for r in mine])
    passes = np.array([r["score"][f"pass@{k}"] for r in mine])
    rows.append({"method": method, "seeds": len(mine), "mean": float(scores.mean()),
                 "std": float(scores.std(ddof=1)) if len(mine) > 1 else 0.0,
                 "min": float(scores.min()), "max": float(scores.max()),
                 "pass": float(passes.mean()),
                 "tokens": float(np.mean([r["generated_tokens"] for r in mine])),
                 "iterations": float(np.mean([r["iterations"] for r in mine])),
                 "train_s": float(np.mean([r.get("train_s", 0.0) for r in mine])),
                 "wall_s": float(np.mean([r["wall_s"] for r in mine]))})
  return rows


def markdown(rows: list[dict], k: int, header: str) -> str:
  lines = [header, "",
           f"| method | mean@{k} (mean ± std over seeds) | min-max | pass@{k} | "
           "generated tokens | iterations | training time | wall time per run |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {100 * r['mean']:.1f}% ± {100 * r['std']:.1f} "
                 f"(n={r['seeds']}) | {100 * r['min']:.1f}-{100 * r['max']:.1f}% | "
                 f"{100 * r['pass']:.1f}% | {r['tokens']:,.0f} | {r['iterations']:.0f} | "
                 f"{r['train_s'] / 60:.1f} min | {r['wall_s'] / 60:.1f} min |")
  return "\n".join(lines) + "\n"


def plot(records: list[dict], k: int, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for i, method in enumerate(dict.fromkeys(r["method"] for r in records)):
    mine = [r for r in records if r["method"] == method]
    xs = [r["generated_tokens"] for r in mine]
    ys = [100 * r["score"][f"mean@{k}"] for r in mine]
    ax.scatter(xs, ys, label=method, color=f"C{i}")
    ax.errorbar([np.mean(xs)], [np.mean(ys)], yerr=[np.std(ys)], color=f"C{i}", capsize=4)
    if method != "base":  # straight line from the base model to the trained one
      base = [100 * r["score"][f"mean@{k}"] for r in records if r["method"] == "base"]
      if base:
        ax.plot([0, np.mean(xs)], [np.mean(base), np.mean(ys)], color=f"C{i}", alpha=0.4)
  ax.set_xlabel("generated tokens in training")
  ax.set_ylabel(f"held-out mean@{k} (%)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  from jaxdistill.configs import countdown as presets
  config = presets.get_config(FLAGS.preset)
  k = config.eval.k
  unknown = set(FLAGS.methods) - {"base", *METHODS}
  if unknown:
    raise app.UsageError(f"unknown methods {sorted(unknown)}; choose from base, "
                         f"{', '.join(METHODS)}")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  common = [f"sft.cache_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'warm_start'))}",
            f"task.data_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'data'))}"]
  seeds = [int(s) for s in FLAGS.seeds]
  budget = FLAGS.token_budget
  records = []
  methods = [m for m in FLAGS.methods if m != "base"]
  if not budget:  # the preset's own mcts_distill run sets the budget for everyone
    first = run_method("mcts_distill", seeds[0], 0, common)
    budget = first["generated_tokens"]
    print(f"token budget: {budget:,} (the preset's mcts_distill run)")
  # mean completion length of the starting policy (its first iterations), to size the
  # iteration count of the sampling methods
  probe = [r for r in _metrics(os.path.join(FLAGS.workdir, f"mcts_distill-seed{seeds[0]}"))
           if "completion_tokens" in r][:8]
  completion = (FLAGS.completion_tokens or
                (float(np.mean([r["completion_tokens"] for r in probe])) if probe
                 else config.rollout.max_completion_tokens / 2))
  print(f"expected completion length: {completion:.1f} tokens")
  for method in (["base"] if "base" in FLAGS.methods else []) + methods:
    for seed in seeds:
      records.append(run_method(
          method, seed, budget, common + iteration_overrides(config, method, budget,
                                                             completion)))
  rows = summarize(records, k)
  header = (f"Countdown ({config.task.numbers} numbers), preset `{FLAGS.preset}`, "
            f"{config.eval.num_problems} held-out problems, mean@{k} at temperature "
            f"{config.eval.temperature}, no search at evaluation; every method starts from the "
            f"same warm-started base model and samples about {budget:,} tokens in training."
            + (f" Overrides: {', '.join(f'`{o}`' for o in FLAGS.set)}." if FLAGS.set else ""))
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  table = markdown(rows, k, header)
  with open(FLAGS.out, "w") as f:
    f.write(table)
  stem = os.path.splitext(FLAGS.out)[0]
  with open(stem + ".json", "w") as f:
    json.dump({"budget": budget, "rows": rows, "runs": records,
               "overrides": FLAGS.set}, f, indent=1)
  plot(records, k, stem + ".png")
  print(table)
  print(f"wrote {FLAGS.out}, {stem}.json, {stem}.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
