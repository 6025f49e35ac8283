"""Compare training methods at an equal budget of generated tokens, from one base model.

    python -m jaxdistill.experiments.compare      # tiny preset: LR sweep, then 3 seeds each
    python -m jaxdistill.experiments.compare --preset=medium   # 4 numbers, hidden 512 (GPU)

1. The base model (one shared warm start) is scored per seed.
2. Each method's generated tokens per iteration are measured by a 2-iteration probe, so
   that its learning rate decays to zero exactly as it reaches `--token_budget`.
3. Learning rate: seed 0 at each of `--learning_rates` (or the method's own grid from
   `--method_learning_rates`); the best final mean@k on the
   validation split (the last problems of the train split, which no run trains on; never
   the test split) is kept for the other seeds. Under the sweep table: the pick's lead over
   each other rate with its standard error, paired problem by problem, and a warning when
   the validation problems cannot tell the pick from another rate, or when the pick is an
   end of its grid.
4. Every run: `--curve_points` evaluations on the validation split during training (the
   learning curve against generated tokens), then mean@k and pass@k on the held-out test
   split at the reference temperature (0.2) and at 0.8, no search.
Stopping it (SIGTERM or Ctrl-C) lets the running job write a checkpoint; the same command
then resumes the comparison where it stopped. Writes a markdown table with per-seed numbers and the paired difference of each method to
cispo and to the base model (mean and standard error over seeds), the raw numbers (JSON)
and a plot of the learning curves (PNG). Every run is a `jaxdistill.main` job in
`WORKDIR/<name>`, resumable: finished runs are read back, not repeated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from jaxdistill.experiments.report import markdown, plot, summarize
from jaxdistill.experiments.sweep import (grid_edge, margin_note, method_grids, pick_margins,
                                          sweep_table)
from jaxdistill.metrics import write_json

# method name -> config overrides (the comparison's variants of the three algorithms)
METHODS = {
    "mcts_distill": ["algo=mcts_distill"],
    # identical candidate steps merged: cheaper trees, so more updates for the same tokens
    "mcts_dedup": ["algo=mcts_distill", "search.dedup_children=True"],
    "mcts_tree": ["algo=mcts_distill", "search.targets=tree", "search.rollout_to_end=True",
                  "search.dedup_children=True", "search.num_agents=2",
                  "search.num_iterations=2", "search.tree_rows=20"],  # 5 expansions x 4
    # AlphaZero targets: the path's first 4 nodes x K candidates against their visit counts
    "mcts_visits": ["algo=mcts_distill", "search.targets=visits", "search.tree_rows=16"],
    # the value head at its own rate: at 1e-5 it stays worse than a constant (docs/results.md)
    "mcts_value_lr": ["algo=mcts_distill", "learner.value_learning_rate=1e-3"],
    "cispo": ["algo=cispo"],
    "best_of_n": ["algo=best_of_n"],
}
# mcts_tree, its children cut at the rollouts' most uncertain tokens (EPTree)
METHODS["mcts_entropy"] = METHODS["mcts_tree"] + ["search.branch_at=entropy"]
# mcts_tree (some 130 value targets per update, not 8) with the value head at its own rate
METHODS["mcts_tree_value_lr"] = METHODS["mcts_tree"] + ["learner.value_learning_rate=1e-3"]


def define_flags():
  """Command-line flags (defined only when run as a program: importing this module for
  its functions must not clash with the flags of other absl programs)."""
  flags.DEFINE_string("preset", "tiny", "config preset (countdown.py)")
  flags.DEFINE_list("methods", ["base", "mcts_distill", "mcts_tree", "cispo", "best_of_n"],
                    f"base and training methods ({', '.join(METHODS)})")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "RL seeds (the base model is the same for all)")
  flags.DEFINE_list("learning_rates", ["1e-5", "3e-5", "1e-4"], "learning rates tried on the "
                    "first seed (one value: no sweep)")
  flags.DEFINE_multi_string("method_learning_rates", [], "a method's own grid in place of "
                            "--learning_rates, e.g. mcts_distill=3e-6,1e-5,3e-5 (repeat the "
                            "flag for more methods), for a method whose best rate lies outside "
                            "the common grid")
  flags.DEFINE_integer("token_budget", 0, "generated tokens per training run; 0: what the "
                       "preset's own mcts_distill run samples (1,422,558 on tiny, measured; "
                       "other presets: its 2-iteration probe's tokens per iteration x "
                       "train.num_iterations)")
  flags.DEFINE_integer("curve_points", 5, "validation evaluations during each run")
  flags.DEFINE_list("temperatures", ["0.2", "0.8"], "evaluation temperatures (first: the "
                    "one learning rates are picked at)")
  flags.DEFINE_integer("eval_key_sets", 1, "independent sets of k samples per test problem at "
                       "the first temperature (mean@k pooled over them: mean@(k * sets)); more "
                       "sets shrink the evaluation noise in the paired differences")
  flags.DEFINE_boolean("problem_se", True, "score every run's test problems one by one at "
                       "the first temperature, so that the paired differences' standard error "
                       "also counts the sampling of the test problems (all seeds share them)")
  flags.DEFINE_string("workdir", "runs/compare", "where runs go")
  flags.DEFINE_string("out", "results/countdown_tiny.md", "markdown table (JSON and PNG beside)")
  flags.DEFINE_multi_string("set", [], "extra config overrides for every run, e.g. "
                            "--set=search.num_agents=8")


FLAGS = flags.FLAGS


def _metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def run_command(cmd: list[str]) -> int:
  """Run one job and wait for it; stopping the comparison stops the job cleanly.

  SIGTERM is passed on to the job and Ctrl-C reaches it anyway (same process group): the job
  finishes its iteration and writes a checkpoint (see jaxdistill.interrupts), and this
  process waits for that, then exits (0 after SIGTERM, 130 after Ctrl-C) instead of taking
  the stopped job for a finished one. Running the same comparison again resumes it."""
  process = subprocess.Popen(cmd)
  received = []

  def forward(signum, frame):
    del frame
    received.append(signum)
    process.send_signal(signum)

  previous = signal.signal(signal.SIGTERM, forward)
  try:
    try:
      code = process.wait()
    except KeyboardInterrupt:
      received.append(signal.SIGINT)
      print("interrupted: waiting for the job to write its checkpoint (Ctrl-C again to abort)",
            flush=True)
      try:
        code = process.wait()
      except KeyboardInterrupt:
        process.kill()
        raise
  finally:
    signal.signal(signal.SIGTERM, previous)
  if received:
    print("comparison stopped; run the same command to resume it", flush=True)
    sys.exit(0 if received[0] == signal.SIGTERM else 130)
  return code


def _run(workdir: str, overrides: list[str], mode: str = "train") -> float:
  """One jaxdistill.main job; returns its wall time in seconds."""
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config", f"countdown.py:{FLAGS.preset}",
         f"--workdir={workdir}", f"--mode={mode}",
         *[f"--config.{o}" for o in overrides + FLAGS.set]]
  print("$", " ".join(cmd), flush=True)
  started = time.perf_counter()
  code = run_command(cmd)
  if code:
    raise SystemExit(f"run failed (exit {code}): {' '.join(cmd)}")
  return time.perf_counter() - started


def _cached(path: str, make):
  """JSON at path, or make() written there (last, so its presence means complete)."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  value = make()
  write_json(path, value)
  return value


def evaluate(workdir: str, common: list[str], temperature: str, split: str = "test",
             key_set: int = 0, per_problem: bool = False) -> dict:
  """mean@k / pass@k of the run's latest checkpoint (or the base model) on a split; key_set
  r > 0 draws the samples with seed + KEY_SET_STRIDE * r (an independent set of k per problem);
  per_problem: with each problem's mean reward ("per_problem"). One cache per evaluation keeps
  the per-problem scores, so asking for them does not evaluate again (a cache written before
  they were recorded is evaluated again once)."""
  if key_set:
    common = with_key_set(common, key_set)

  def make():
    _run(workdir, common + [f"eval.temperature={temperature}", f"eval.split={split}",
                            f"eval.num_problems={100_000}"], mode="eval")
    with open(os.path.join(workdir, "eval_result.json")) as f:
      result = json.load(f)
    if per_problem and "per_problem" not in result:
      raise RuntimeError(f"{workdir}: the evaluation wrote no per-problem scores")
    return result
  path = os.path.join(workdir, f"eval_{split}_t{temperature}"
                      + (f"_keys{key_set}" if key_set else "") + ".json")
  result = _cached(path, make)
  if per_problem and "per_problem" not in result:  # cached before they were recorded
    os.remove(path)
    result = _cached(path, make)
  return result if per_problem else {k: v for k, v in result.items() if k != "per_problem"}


KEY_SET_STRIDE = 1000  # evaluation seeds of key set r: seed + 1000 r (runs use seeds < 1000)


def with_key_set(overrides: list[str], key_set: int) -> list[str]:
  """The overrides with their `seed=` moved to key set key_set (the evaluation's sample keys
  derive from the seed alone; the checkpoint evaluated is the workdir's)."""
  seeds = [o for o in overrides if o.startswith("seed=")]
  if len(seeds) != 1:
    raise ValueError(f"expected one seed= override, got {seeds}")
  seed = int(seeds[0][len("seed="):])
  return [f"seed={seed + KEY_SET_STRIDE * key_set}" if o.startswith("seed=") else o
          for o in overrides]


def pool_key_sets(results: list[dict], k: int) -> dict:
  """One score from evaluations of the same problems with independent sample keys: mean@k
  and pass@k averaged (mean@k pooled over the sets is mean@(k * sets)); per set kept."""
  pooled = {f"mean@{k}": float(np.mean([r[f"mean@{k}"] for r in results])),
            f"pass@{k}": float(np.mean([r[f"pass@{k}"] for r in results]))}
  return pooled | {"key_sets": [r[f"mean@{k}"] for r in results]}


def scored(first: dict, workdir: str, overrides: list[str]) -> dict:
  """The test score at the first temperature, pooled over --eval_key_sets sets of keys (first:
  the set drawn with the run's own seed)."""
  if FLAGS.eval_key_sets <= 1:
    return first
  extra = [evaluate(workdir, overrides, FLAGS.temperatures[0], key_set=r)
           for r in range(1, FLAGS.eval_key_sets)]
  return pool_key_sets([first] + extra, _k())


def tokens_per_iteration(method: str, common: list[str]) -> float:
  """Generated tokens per iteration of a method, from a 2-iteration probe of the base model."""
  probe = os.path.join(FLAGS.workdir, f"probe-{method}")

  def make():
    _run(probe, common + METHODS[method] + ["train.num_iterations=2", "eval.every=0",
                                            "eval.at_start=False"])
    rows = [r for r in _metrics(probe) if "generated_tokens" in r]
    shutil.rmtree(os.path.join(probe, "checkpoints"), ignore_errors=True)
    return float(np.mean([r["generated_tokens"] for r in rows]))
  return _cached(os.path.join(FLAGS.workdir, f"probe-{method}.json"), make)


# generated tokens of the tiny preset's own mcts_distill run: 3x the 474,186 its 64 dense-reward
# iterations sampled in the first comparison (results/countdown_tiny.md; --token_budget=474186
# --set=reward.dense=True repeats that one), the budget of the sparse-reward tables there
TINY_BUDGET = 1_422_558


def default_budget(common: list[str]) -> int:
  """The token budget when --token_budget is 0: the preset's mcts_distill run's tokens (on
  tiny the measured budget of the tables in results/; elsewhere an estimate from its probe:
  the policy's answers change length as it trains)."""
  if FLAGS.preset == "tiny":
    return TINY_BUDGET
  return round(tokens_per_iteration("mcts_distill", common) * _config().train.num_iterations)


def _final_per_problem(workdir: str, name: str, overrides: list[str], temperature: str,
                       split: str) -> list[float]:
  """Each problem's mean reward at the run's last evaluation of a split (the file `name` the
  run wrote), or, for a run that did not write it at that temperature, evaluated again."""
  path = os.path.join(workdir, name)
  final = {}
  if os.path.exists(path):
    with open(path) as f:
      final = json.load(f)
  if final.get("temperature") == float(temperature):
    return final["per_problem"]
  return evaluate(workdir, overrides, temperature, split, per_problem=True)["per_problem"]


def train_run(method: str, seed: int, lr: str, common: list[str], sweep: bool = False) -> dict:
  """One training run at the token budget, evaluated on validation and test; sweep: with
  each validation problem's score ("validation_per_problem"), to pair rates of a sweep."""
  name = f"{method}-lr{lr}-seed{seed}"
  workdir = os.path.join(FLAGS.workdir, name)
  per_iteration = tokens_per_iteration(method, common)
  expected = max(1, round(FLAGS.token_budget / per_iteration))
  every = max(1, expected // FLAGS.curve_points)
  overrides = common + METHODS[method] + [
      f"seed={seed}", f"learner.learning_rate={lr}", f"learner.decay_steps={expected}",
      f"train.num_iterations={3 * expected}", f"train.token_budget={FLAGS.token_budget}",
      "eval.at_start=False", f"eval.every={every}", "train.checkpoint_every=1000000"]

  def make():
    wall = _run(workdir, overrides)
    rows = _metrics(workdir)
    train_rows = [r for r in rows if "loss" in r]
    tokens = np.cumsum([r["generated_tokens"] for r in train_rows])
    at_step = {r["step"]: int(t) for r, t in zip(train_rows, tokens)}
    k = next(key for key in rows[-1] if key.startswith("val_mean@"))[len("val_mean@"):]
    curve = [(at_step.get(r["step"], 0), r[key]) for r in rows
             for key in (f"curve_mean@{k}", f"val_mean@{k}") if key in r]
    final = next(r for r in reversed(rows) if f"eval_mean@{k}" in r)  # at eval.temperature
    return {"method": method, "seed": seed, "lr": float(lr), "wall_s": wall,
            "iterations": len(train_rows), "generated_tokens": int(tokens[-1]),
            "train_s": float(train_rows[-1]["elapsed_s"]),
            "reward": [r["reward"] for r in train_rows],
            "value_loss": [r.get("value_loss", float("nan")) for r in train_rows],
            "value_target_var": [r.get("value_target_var", float("nan")) for r in train_rows],
            "validation": next(r[f"val_mean@{k}"] for r in reversed(rows)
                               if f"val_mean@{k}" in r),
            "curve": curve,
            "final_test": {key[len("eval_"):]: value for key, value in final.items()
                           if key.startswith("eval_")}}
  record = _cached(os.path.join(workdir, "compare_run.json"), make)
  # the run's own final evaluation is the test score at the preset's evaluation temperature
  # (same problems and sample keys as --mode eval); other temperatures are evaluated here
  reference = str(_eval_temperature())
  record["test"] = {t: record["final_test"] if float(t) == float(reference)
                    else evaluate(workdir, overrides, t) for t in FLAGS.temperatures}
  t0 = FLAGS.temperatures[0]
  record["test"][t0] = scored(record["test"][t0], workdir, overrides)
  if FLAGS.problem_se:
    record["per_problem"] = _final_per_problem(workdir, "eval_after.json", overrides, t0, "test")
  if sweep:  # "validation" is the run's last val_ evaluation, at the reference temperature
    record["validation_per_problem"] = _final_per_problem(workdir, "val_after.json", overrides,
                                                          reference, "validation")
  return record


def base_run(seed: int, common: list[str]) -> dict:
  """The shared base model, scored with this seed's evaluation samples."""
  workdir = os.path.join(FLAGS.workdir, f"base-seed{seed}")
  overrides = common + [f"seed={seed}"]
  test = {t: evaluate(workdir, overrides, t) for t in FLAGS.temperatures}
  t0 = FLAGS.temperatures[0]
  test[t0] = scored(test[t0], workdir, overrides)
  record = {"method": "base", "seed": seed, "generated_tokens": 0, "iterations": 0,
            "validation": evaluate(workdir, overrides, t0, "validation")["mean@" + str(_k())],
            "test": test}
  if FLAGS.problem_se:
    record["per_problem"] = evaluate(workdir, overrides, t0, per_problem=True)["per_problem"]
  return record


def _config():
  """The preset with --set applied: what every run of the comparison is configured with."""
  from jaxdistill.configs import countdown as presets
  return presets.apply_overrides(presets.get_config(FLAGS.preset), FLAGS.set)


def _k() -> int:
  return _config().eval.k


def _eval_temperature() -> float:
  """The temperature of each training run's own final test evaluation."""
  return _config().eval.temperature


def main(argv):
  del argv
  k = _k()
  unknown = set(FLAGS.methods) - {"base", *METHODS}
  if unknown:
    raise app.UsageError(f"unknown methods {sorted(unknown)}; choose from base, "
                         f"{', '.join(METHODS)}")
  if FLAGS.eval_key_sets < 1:
    raise app.UsageError(f"--eval_key_sets must be at least 1, got {FLAGS.eval_key_sets}")
  if FLAGS.eval_key_sets > 1 and (any(o.startswith("seed=") for o in FLAGS.set)
                                  or any(int(s) >= KEY_SET_STRIDE for s in FLAGS.seeds)):
    raise app.UsageError(f"--eval_key_sets draws evaluation seeds seed + {KEY_SET_STRIDE} r: "
                         f"give seeds below {KEY_SET_STRIDE} with --seeds, not --set=seed=")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  common = [f"sft.cache_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'warm_start'))}",
            f"task.data_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'data'))}",
            "train.progress=False"]
  if FLAGS.token_budget < 0:
    raise app.UsageError(f"--token_budget must be >= 0, got {FLAGS.token_budget}")
  if not FLAGS.token_budget:
    FLAGS.token_budget = default_budget(common)
    print(f"token budget: {FLAGS.token_budget:,} generated tokens per training run", flush=True)
  seeds = [int(s) for s in FLAGS.seeds]
  grids = method_grids(FLAGS.methods, FLAGS.learning_rates, FLAGS.method_learning_rates)
  records, sweep, sweep_runs, notes = [], {}, [], []
  if "base" in FLAGS.methods:
    records += [base_run(seed, common) for seed in seeds]
  for method in (m for m in FLAGS.methods if m != "base"):
    swept = len(grids[method]) > 1  # rates to pair problem by problem on validation
    tried = [train_run(method, seeds[0], lr, common, sweep=swept) for lr in grids[method]]
    best = max(tried, key=lambda r: r["validation"])
    sweep[method] = f"{best['lr']:g}"
    margins = (pick_margins([{"lr": r["lr"], "per_problem": r["validation_per_problem"]}
                             for r in tried], best["lr"]) if swept else {})
    sweep_runs += [{"method": r["method"], "lr": r["lr"], "validation": r["validation"]}
                   | ({"pick_lead": margins[r["lr"]][0], "pick_lead_se": margins[r["lr"]][1]}
                      if r["lr"] in margins else {}) for r in tried]
    print(f"{method}: validation mean@{k} by learning rate "
          + ", ".join(f"{r['lr']:g}: {100 * r['validation']:.1f}%" for r in tried)
          + f" -> {sweep[method]}", flush=True)
    if margins:
      notes.append(margin_note(method, best["lr"], margins,
                               len(best["validation_per_problem"])))
      print(notes[-1], flush=True)
    edge = grid_edge(grids[method], best["lr"])
    if edge:
      notes.append(f"{method}: the picked rate is the {edge} tried; the best may lie beyond "
                   "it: extend its grid (--method_learning_rates).")
      print("warning: " + notes[-1], flush=True)
    records.append(best)
    records += [train_run(method, seed, grids[method][tried.index(best)], common)
                for seed in seeds[1:]]
  rows = summarize(records, k, FLAGS.temperatures)
  problems = len(records[0].get("per_problem", [])) if records else 0
  header = (f"Countdown, preset `{FLAGS.preset}`, every training run samples "
            f"{FLAGS.token_budget:,} tokens from the same warm-started base model; test "
            f"mean@{k} on the held-out problems, no search at evaluation; learning rate per "
            f"method picked on seed {seeds[0]} from {', '.join(FLAGS.learning_rates)}"
            + "".join(f" ({m}: {', '.join(g)})" for m, g in grids.items()
                      if g != list(FLAGS.learning_rates))
            + " by "
            f"validation mean@{k}; differences are paired by seed (mean ± standard error over "
            f"seeds, the test problems held fixed"
            + (f"; 'with problems': counting the sampling of the {problems} test problems "
               f"too, from one set of {k} samples per problem and run" if problems else "")
            + ")."
            + (f" At T={FLAGS.temperatures[0]} each run is scored on {FLAGS.eval_key_sets} "
               f"independent sets of {k} samples per problem: mean@{k} and pass@{k} are "
               f"averaged over the sets (mean@{k * FLAGS.eval_key_sets})."
               if FLAGS.eval_key_sets > 1 else "")
            + (f" Overrides: {', '.join(f'`{o}`' for o in FLAGS.set)}." if FLAGS.set else ""))
  table = markdown(rows, k, header, FLAGS.temperatures)
  table += sweep_table(grids, sweep_runs, k, seeds[0], notes)
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  with open(FLAGS.out, "w") as f:
    f.write(table)
  stem = os.path.splitext(FLAGS.out)[0]
  with open(stem + ".json", "w") as f:
    runs = [{key: value for key, value in r.items()
             if key not in ("per_problem", "validation_per_problem")} for r in records]
    json.dump({"budget": FLAGS.token_budget, "rows": rows, "runs": runs, "sweep": sweep,
               "sweep_runs": sweep_runs, "grids": grids, "methods": {m: METHODS[m] for m in sweep},
               "overrides": FLAGS.set}, f, indent=1)
  plot(records, sweep, k, FLAGS.temperatures[0], stem + ".png")
  print(table)
  print(f"wrote {FLAGS.out}, {stem}.json, {stem}.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
