"""Compare training methods at an equal budget of generated tokens, from one base model.

    python -m jaxdistill.experiments.compare      # tiny preset: LR sweep, then 5 seeds each
    python -m jaxdistill.experiments.compare --preset=medium   # 4 numbers, hidden 512 (GPU)
    python -m jaxdistill.experiments.compare --preset=tiny4 --equal=updates \
        --method_learning_rates=cispo=1e-5 ...   # the reference's protocol, rates frozen

The protocol, fixed before any run:
1. Splits disjoint by content: `--test_problems` (3,000) distinct test problems,
   `--validation_problems` (1,000) validation problems, the rest of the preset's train split
   (cut to what the problem space still holds).
2. The base model (one shared warm start) is scored per seed.
3. Each method's generated tokens per iteration are measured by a 2-iteration probe, so
   that its learning rate decays to zero exactly as it reaches `--token_budget`. With
   `--equal=updates` (the reference's table, not compute-matched) every run instead makes
   the preset's train.num_iterations updates of train.prompts_per_iteration prompts, each
   method at its own per-prompt budget; those runs have workdirs of their own (`-updates`)
   and the same warm start, splits and base-model scores. Their rates can be frozen at
   the equal-token table's picks (one rate per method in `--method_learning_rates`).
4. Learning rate: the first `--pick_seeds` (2) seeds at each of `--learning_rates` (or the
   method's own grid from `--method_learning_rates`); the best final validation mean@k,
   pooled over those seeds, is frozen for the other seeds before any test number is read.
   Under the sweep table: the pick's lead over each other rate with its standard error,
   paired problem by problem, and a warning when the validation problems cannot tell the
   pick from another rate, or when the pick is an end of its grid. Test scores of rates not
   picked are never read (a run's own final evaluation of the first --reference_problems
   test problems stays in its workdir; the test evaluations are run for picked rates only).
5. Every run: `--curve_points` evaluations on the validation split during training (the
   learning curve against generated tokens), then, no search: mean@`--test_k` (4) and
   pass@`--test_k` on every test problem at each of `--temperatures` (the primary score, with
   each problem's score kept), and the reference's metric, mean@16 and pass@16 on the first
   `--reference_problems` (820), at the preset's evaluation temperature.
6. Differences are paired by seed, with the standard error over seeds and the unbiased
   two-way one that also counts the sampling of the test problems; a difference counts when
   it exceeds twice the larger, whichever method leads.
Stopping it (SIGTERM or Ctrl-C) lets the running job write a checkpoint; the same command
then resumes the comparison where it stopped. Writes a markdown table with per-seed numbers
and the paired difference of each method to cispo and to the base model (mean and standard
error over seeds), the raw numbers (JSON) and a plot of the learning curves (PNG). Every run
is a `jaxdistill.main` job in `WORKDIR/<name>`, resumable: finished runs are read back, not
repeated. A picked run whose checkpoint is gone (records travel between machines in git,
checkpoints do not) is scored from its cached test evaluations or else trained again in
`WORKDIR/<name>-again`; the record its rate was picked on is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags

from jaxdistill import methods as registry
from jaxdistill.experiments.jobs import Pool, check_stopped, run_command
from jaxdistill.experiments.report import markdown, plot, summarize
from jaxdistill.experiments.sweep import best_rate, method_grids, pick_rate, sweep_table
from jaxdistill.metrics import write_json

# name -> config overrides: every registered method as configured, and variants of them
METHODS = {name: [f"algo={name}"] for name in registry.METHODS} | {
    # identical candidate steps merged: cheaper trees, so more updates for the same tokens
    "mcts_dedup": ["algo=mcts_distill", "search.dedup_children=True"],
    "mcts_tree": ["algo=mcts_distill", "search.targets=tree", "search.rollout_to_end=True",
                  "search.dedup_children=True", "search.num_agents=2",
                  "search.num_iterations=2", "search.tree_rows=20"],  # 5 expansions x 4
    # AlphaZero targets: the path's first 4 nodes x K candidates against their visit counts
    "mcts_visits": ["algo=mcts_distill", "search.targets=visits", "search.tree_rows=16"],
    # the value head at its own rate: at 1e-5 it stays worse than a constant (docs/results.md)
    "mcts_value_lr": ["algo=mcts_distill", "learner.value_learning_rate=1e-3"],
    # DeepSearch with its own learner: PPO, clip-higher 0.2 / 0.28, dual clip 10, token-mean,
    # no KL, mean-only advantages (its rows bring their own)
    "deepsearch": ["algo=deepsearch", "learner.policy_loss=ppo", "learner.ppo_eps=0.2",
                   "learner.ppo_eps_high=0.28", "learner.dual_clip=10.0",
                   "learner.loss_aggregation=token", "learner.kl_coef=0.0"],
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
  flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "RL seeds (the base model is the "
                    "same for all)")
  flags.DEFINE_integer("pick_seeds", 2, "the first seeds that try every learning rate; the "
                       "rate is picked on their pooled validation score")
  flags.DEFINE_list("learning_rates", ["1e-5", "3e-5", "1e-4"], "learning rates tried on the "
                    "first --pick_seeds seeds (one value: no sweep)")
  flags.DEFINE_integer("test_problems", 3000, "distinct test problems (the primary score)")
  flags.DEFINE_integer("test_k", 4, "samples per test problem of the primary score (mean@k's "
                       "expectation does not depend on k: more problems shrink its largest "
                       "error term)")
  flags.DEFINE_integer("reference_problems", 820, "the first test problems scored with the "
                       "reference's mean@16 / pass@16 (the preset's eval.k)")
  flags.DEFINE_integer("validation_problems", 1000, "distinct validation problems")
  flags.DEFINE_multi_string("method_learning_rates", [], "a method's own grid in place of "
                            "--learning_rates, e.g. mcts_distill=3e-6,1e-5,3e-5 (repeat the "
                            "flag for more methods), for a method whose best rate lies outside "
                            "the common grid")
  flags.DEFINE_enum("equal", "tokens", ["tokens", "updates"], "what every training run gets "
                    "the same of: generated tokens (`--token_budget`), or the reference's own "
                    "protocol, the preset's prompts and updates (train.num_iterations x "
                    "train.prompts_per_iteration), each method at its natural per-prompt "
                    "budget and its tokens reported; a run of one is never reused by the other")
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
  flags.DEFINE_integer("jobs", 1, "jobs run side by side, each pinned to a CPU core of its "
                       "own (Linux; 1: one job at a time, free to use every core). A job on "
                       "one core computes in one thread, which moves a run's numbers in the "
                       "last bits: keep one setting for the whole of a comparison")
  flags.DEFINE_bool("status", False, "print how far the protocol's runs are, from the records "
                    "in --workdir (no job is run, no test score read), and exit")
  flags.DEFINE_string("workdir", "runs/compare", "where runs go")
  flags.DEFINE_string("out", "", "markdown table (JSON and PNG beside); '' -> "
                      "results/<task>_<preset>.md")
  flags.DEFINE_multi_string("set", [], "extra config overrides for every run, e.g. "
                            "--set=search.num_agents=8")


FLAGS = flags.FLAGS


def _metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def _run(workdir: str, overrides: list[str], mode: str = "train") -> float:
  """One jaxdistill.main job; returns its wall time in seconds. With --jobs > 1 its output
  goes to WORKDIR/job.log (jobs run side by side)."""
  check_stopped()  # a job after a stop: not announced, no workdir made
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config", f"countdown.py:{FLAGS.preset}",
         f"--workdir={workdir}", f"--mode={mode}",
         *[f"--config.{o}" for o in overrides + FLAGS.set]]
  log = os.path.join(workdir, "job.log") if FLAGS.jobs > 1 else None
  if log:
    os.makedirs(workdir, exist_ok=True)
  print("$", " ".join(cmd) + (f" >> {log}" if log else ""), flush=True)
  started = time.perf_counter()
  code = run_command(cmd, log)
  if code:
    raise SystemExit(f"run failed (exit {code}): {' '.join(cmd)}"
                     + (f"; its output: {log}" if log else ""))
  return time.perf_counter() - started


def _read(path: str):
  with open(path) as f:
    return json.load(f)


def _cached(path: str, make):
  """JSON at path, or make() written there (last, so its presence means complete)."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  value = make()
  write_json(path, value)
  return value


class NotCached(Exception):
  """An evaluation asked of its cache alone (`cached_only`) that is not there."""


def evaluate(workdir: str, common: list[str], temperature: str, split: str = "test",
             key_set: int = 0, per_problem: bool = False, k: int | None = None,
             problems: int = 100_000, cached_only: bool = False) -> dict:
  """mean@k / pass@k of the run's latest checkpoint (or the base model) on the first
  `problems` problems of a split (k: the preset's eval.k when None); key_set r > 0 draws the
  samples with seed + KEY_SET_STRIDE * r (an independent set of k per problem); per_problem:
  with each problem's mean reward ("per_problem"). One cache per evaluation keeps the
  per-problem scores, so asking for them does not evaluate again (a cache written before they
  were recorded is evaluated again once). cached_only: NotCached where it would evaluate."""
  if key_set:
    common = with_key_set(common, key_set)
  settings = [f"eval.temperature={temperature}", f"eval.split={split}",
              f"eval.num_problems={problems}"] + ([f"eval.k={k}"] if k else [])

  def make():
    _run(workdir, common + settings, mode="eval")
    with open(os.path.join(workdir, "eval_result.json")) as f:
      result = json.load(f)
    if per_problem and "per_problem" not in result:
      raise RuntimeError(f"{workdir}: the evaluation wrote no per-problem scores")
    return result
  path = os.path.join(workdir, f"eval_{split}_t{temperature}" + (f"_k{k}" if k else "")
                      + (f"_n{problems}" if problems != 100_000 else "")
                      + (f"_keys{key_set}" if key_set else "") + ".json")
  if cached_only and not (os.path.exists(path) and (not per_problem
                                                     or "per_problem" in _read(path))):
    raise NotCached(path)
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


def test_scores(workdir: str, overrides: list[str], cached_only: bool = False) -> dict:
  """The primary score: mean@test_k and pass@test_k on every test problem at each
  temperature, the first one pooled over --eval_key_sets sets of keys (the first set drawn
  with the run's own seed), and its per-problem scores ("per_problem", in the split's order,
  the same in every run). cached_only: NotCached unless every one of them is cached."""
  k, t0 = FLAGS.test_k, FLAGS.temperatures[0]
  test = {t: evaluate(workdir, overrides, t, k=k, per_problem=t == t0, cached_only=cached_only)
          for t in FLAGS.temperatures}
  per_problem = test[t0].pop("per_problem")
  if FLAGS.eval_key_sets > 1:
    extra = [evaluate(workdir, overrides, t0, key_set=r, k=k, cached_only=cached_only)
             for r in range(1, FLAGS.eval_key_sets)]
    test[t0] = pool_key_sets([test[t0]] + extra, k)
  return test | {"per_problem": per_problem}


def tokens_per_iteration(method: str, common: list[str]) -> float:
  """Generated tokens per iteration of a method, from a probe of the base model (2
  iterations, or what the method's cost needs: a whole DeepSearch round with its filter)."""
  probe = os.path.join(FLAGS.workdir, f"probe-{method}")
  from jaxdistill.configs import countdown as presets
  config = presets.apply_overrides(_config(), METHODS[method])
  iterations = registry.get(config.algo).probe_iterations(config)

  def make():
    _run(probe, common + METHODS[method] + [f"train.num_iterations={iterations}",
                                            "eval.every=0", "eval.at_start=False"])
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


def _train_overrides(method: str, seed: int, lr: str, common: list[str]) -> list[str]:
  """A training run's config overrides: its method, seed and rate, the learning rate decaying
  to zero as the run reaches the token budget (--equal=updates: the preset's iterations),
  its own final test evaluation on the first --reference_problems problems (the reference's
  metric)."""
  if FLAGS.equal == "updates":
    expected = _config().train.num_iterations
    budget = [f"train.num_iterations={expected}"]
  else:
    expected = max(1, round(FLAGS.token_budget / tokens_per_iteration(method, common)))
    budget = [f"train.num_iterations={3 * expected}", f"train.token_budget={FLAGS.token_budget}"]
  every = max(1, expected // FLAGS.curve_points)
  return common + METHODS[method] + [
      f"seed={seed}", f"learner.learning_rate={lr}", f"learner.decay_steps={expected}",
      *budget, "eval.at_start=False", f"eval.every={every}", "train.checkpoint_every=1000000",
      f"eval.num_problems={FLAGS.reference_problems}"]


def _run_dir(method: str, seed: int, lr: str) -> str:
  """A training run's workdir (runs at equal updates apart from those at equal tokens)."""
  suffix = "-updates" if FLAGS.equal == "updates" else ""
  return os.path.join(FLAGS.workdir, f"{method}-lr{lr}-seed{seed}{suffix}")


def _again_dir(method: str, seed: int, lr: str) -> str:
  """Where a picked run whose checkpoint did not travel is trained again (`_trained_again`)."""
  return _run_dir(method, seed, lr) + "-again"


def train_run(method: str, seed: int, lr: str, common: list[str], sweep: bool = False,
              workdir: str | None = None) -> dict:
  """One training run at the token budget, scored on validation (its own final evaluation;
  sweep: with each validation problem's score, "validation_per_problem", to pair the rates of
  a sweep). No test score: `with_test` adds it once the rate is picked. workdir: in place of
  the run's own (`_run_dir`)."""
  workdir = workdir or _run_dir(method, seed, lr)
  overrides = _train_overrides(method, seed, lr, common)

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
            # rows the learner got from a buffer of earlier verified solutions: no tokens
            "replayed": int(sum(r.get("replayed", 0) for r in train_rows)),
            "train_s": float(train_rows[-1]["elapsed_s"]),
            "reward": [r["reward"] for r in train_rows],
            "value_loss": [r.get("value_loss", float("nan")) for r in train_rows],
            "value_target_var": [r.get("value_target_var", float("nan")) for r in train_rows],
            "validation": next(r[f"val_mean@{k}"] for r in reversed(rows)
                               if f"val_mean@{k}" in r),
            "curve": curve,
            "final_test": {key[len("eval_"):]: value for key, value in final.items()
                           if key.startswith("eval_")}}
  record = _cached(os.path.join(workdir, "compare_run.json"), make) | {"lr_text": lr}
  if sweep:  # "validation" is the run's last val_ evaluation, at the reference temperature
    record["validation_per_problem"] = _final_per_problem(
        workdir, "val_after.json", overrides, str(_eval_temperature()), "validation")
  return record


def _record(method: str, seed: int, lr: str) -> dict | None:
  """A finished training run's record, or None."""
  path = os.path.join(_run_dir(method, seed, lr), "compare_run.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def progress(methods: list[str], grids: dict[str, list[str]],
             seeds: list[int]) -> tuple[int, int, list[str]]:
  """How far the protocol's training runs are, from the records in --workdir alone (no job
  is run, no test score read): (finished, in all, one line per method: its runs, the rate it
  picked once its sweep is complete, the mean wall time of its training jobs so far)."""
  pickers, rest = seeds[:FLAGS.pick_seeds], seeds[FLAGS.pick_seeds:]
  finished = total = 0
  lines = []
  for method in (m for m in methods if m != "base"):
    grid = grids[method]
    sweep = {lr: [_record(method, seed, lr) for seed in pickers] for lr in grid}
    kept = [r for runs in sweep.values() for r in runs if r]
    picked = None
    if len(kept) == len(grid) * len(pickers):
      picked = best_rate(sweep)
      kept += [r for r in (_record(method, seed, picked) for seed in rest) if r]
    runs = len(grid) * len(pickers) + len(rest)
    finished, total = finished + len(kept), total + runs
    lines.append(f"{method}: {len(kept)}/{runs} training runs, "
                 + (f"rate picked: {float(picked):g}" if picked else
                    f"rate not picked yet (from {', '.join(grid)})")
                 + (f", {np.mean([r['wall_s'] for r in kept]) / 60:.0f} min per training job"
                    if kept else ""))
  return finished, total, lines


def _has_checkpoint(workdir: str) -> bool:
  checkpoints = os.path.join(workdir, "checkpoints")
  return os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))


def _trained_again(record: dict, common: list[str]) -> dict:
  """The record of a finished run trained again in a workdir of its own (`<run>-again`), for
  a run whose checkpoint is gone and whose test scores were not all made: records travel in
  git between machines, checkpoints do not, and `--mode=eval` without a checkpoint would
  score the initial model as if it were the trained one. Same configuration and seed; on
  another machine its numbers differ in the last bits, and so in time its samples: the
  record says whether it repeated the first ("trained_again"). The first run's record, which
  took part in picking the rate, is never touched, so the pick cannot move."""
  method, seed, lr = record["method"], record["seed"], record["lr_text"]
  first, again = _run_dir(method, seed, lr), _again_dir(method, seed, lr)
  path = os.path.join(again, "compare_run.json")
  if os.path.exists(path) and not _has_checkpoint(again):
    try:  # scored already (its scores are read back); else its checkpoint is gone too
      test_scores(again, _train_overrides(method, seed, lr, common), cached_only=True)
    except NotCached:
      for name in ("compare_run.json", "metrics.jsonl"):
        os.remove(os.path.join(again, name))
  if not os.path.exists(path):
    print(f"{first}: no checkpoint beside the record; training it again in {again} for its "
          "test scores", flush=True)
  run = train_run(method, seed, lr, common, workdir=again)
  repeated = bool(run["generated_tokens"] == record["generated_tokens"] and np.isclose(
      run["validation"], record["validation"], rtol=0, atol=1e-6))
  if not repeated:
    print(f"{again}: trained again, the run differs from its first (tokens "
          f"{record['generated_tokens']} -> {run['generated_tokens']}, validation "
          f"{record['validation']:.4f} -> {run['validation']:.4f}; another machine's last "
          "bits): its own scores are the table's", flush=True)
  return run | {"lr_text": lr, "trained_again": {
      "repeated": repeated, "first_validation": record["validation"],
      "first_generated_tokens": record["generated_tokens"]}}


def with_test(record: dict, common: list[str]) -> dict:
  """A training run's record with its test scores (`test_scores`) and the reference's metric
  ("reference": its own final evaluation on the first --reference_problems problems). A run
  whose checkpoint is gone is scored from its cached evaluations, or else trained again
  (`_trained_again`), whose record, scores and curve are then the row's."""
  method, seed, lr = record["method"], record["seed"], record["lr_text"]
  workdir, again = _run_dir(method, seed, lr), _again_dir(method, seed, lr)
  overrides = _train_overrides(method, seed, lr, common)
  if not os.path.exists(os.path.join(again, "compare_run.json")):
    try:
      return record | {"test": test_scores(workdir, overrides,
                                           cached_only=not _has_checkpoint(workdir)),
                       "reference": record["final_test"]}
    except NotCached:
      pass
  run = _trained_again(record, common)
  return run | {"test": test_scores(again, overrides),
                "reference": run["final_test"]}


def base_run(seed: int, common: list[str]) -> dict:
  """The shared base model, scored with this seed's evaluation samples."""
  workdir = os.path.join(FLAGS.workdir, f"base-seed{seed}")
  overrides = common + [f"seed={seed}"]
  reference = evaluate(workdir, overrides, str(_eval_temperature()),
                       problems=FLAGS.reference_problems)
  return {"method": "base", "seed": seed, "generated_tokens": 0, "iterations": 0,
          "validation": evaluate(workdir, overrides, str(_eval_temperature()),
                                 "validation")["mean@" + str(_k())],
          "test": test_scores(workdir, overrides), "reference": reference}


def split_overrides() -> list[str]:
  """The protocol's splits: --test_problems and --validation_problems distinct problems, the
  preset's train size cut to what the task's problem space still holds."""
  from jaxdistill import tasks
  config = _config()
  train = config.task.train_size
  capacity = tasks.from_config(config).capacity()
  if capacity is not None:
    train = min(train, capacity - FLAGS.test_problems - FLAGS.validation_problems)
    if train < 1:
      raise app.UsageError(f"{FLAGS.test_problems} test and {FLAGS.validation_problems} validation "
                       f"problems leave no training problems of the {capacity} the task has")
    if train < config.task.train_size:
      print(f"train split: {train:,} problems (the preset's {config.task.train_size:,} do not "
            f"fit beside {FLAGS.test_problems:,} test and {FLAGS.validation_problems:,} "
            "validation problems)", flush=True)
  return [f"task.test_size={FLAGS.test_problems}",
          f"task.validation_size={FLAGS.validation_problems}", f"task.train_size={train}"]


def _config():
  """The preset with --set applied: what every run of the comparison is configured with."""
  from jaxdistill.configs import countdown as presets
  return presets.apply_overrides(presets.get_config(FLAGS.preset), FLAGS.set)


def _task_name() -> str:
  from jaxdistill import tasks
  return tasks.from_config(_config()).name


def _k() -> int:
  return _config().eval.k


def _eval_temperature() -> float:
  """The temperature of each training run's own final test evaluation."""
  return _config().eval.temperature


def _header(grids: dict[str, list[str]], problems: int, pickers: list[int], k: int) -> str:
  """The table's first paragraph: the protocol the runs followed, from the flags."""
  test_k = FLAGS.test_k
  config = _config()
  budget = (f"every training run samples {FLAGS.token_budget:,} tokens" if FLAGS.equal == "tokens"
            else f"the reference's protocol, not compute-matched: every training run gets the "
                 f"same {config.train.num_iterations} updates of "
                 f"{config.train.prompts_per_iteration} prompts, each method at its natural "
                 f"per-prompt budget (its tokens in the table)")
  return (f"{_task_name().capitalize()}, preset `{FLAGS.preset}`, {budget}, "
          f"from the same warm-started base model; test "
          f"mean@{test_k} on {problems:,} distinct held-out problems (and the reference's "
          f"mean@{k} / pass@{k} on the first {FLAGS.reference_problems}), no search at "
          f"evaluation; learning rate per method picked on seeds "
          f"{', '.join(map(str, pickers))} pooled, from {', '.join(FLAGS.learning_rates)}"
          + "".join(f" ({m}: {', '.join(g)})" for m, g in grids.items()
                    if g != list(FLAGS.learning_rates))
          + " by "
          f"validation mean@{k} on {FLAGS.validation_problems:,} problems, frozen before "
          f"any test score; differences are paired by seed (mean ± standard error over "
          f"seeds, the test problems held fixed"
          + (f"; 'with problems': the unbiased two-way standard error that also counts the "
             f"sampling of the {problems:,} test problems, from one set of {test_k} samples "
             f"per problem and run" if problems else "")
          + "); a difference is flagged past twice the larger, whichever method leads."
          + (f" At T={FLAGS.temperatures[0]} each run is scored on {FLAGS.eval_key_sets} "
             f"independent sets of {test_k} samples per problem: mean@{test_k} and "
             f"pass@{test_k} are averaged over the sets (mean@{test_k * FLAGS.eval_key_sets})."
             if FLAGS.eval_key_sets > 1 else "")
          + (f" Overrides: {', '.join(f'`{o}`' for o in FLAGS.set)}." if FLAGS.set else ""))


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
  if FLAGS.jobs < 1:
    raise app.UsageError(f"--jobs must be at least 1, got {FLAGS.jobs}")
  if not 1 <= FLAGS.pick_seeds <= len(FLAGS.seeds):
    raise app.UsageError(f"--pick_seeds must be in [1, {len(FLAGS.seeds)}] (the number of "
                         f"--seeds), got {FLAGS.pick_seeds}")
  seeds = [int(s) for s in FLAGS.seeds]
  grids = method_grids(FLAGS.methods, FLAGS.learning_rates, FLAGS.method_learning_rates)
  finished, total, lines = progress(FLAGS.methods, grids, seeds)
  print("\n".join([f"{FLAGS.workdir}: {finished} of {total} training runs finished"] + lines),
        flush=True)
  if FLAGS.status:
    return

  os.makedirs(FLAGS.workdir, exist_ok=True)
  common = [f"sft.cache_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'warm_start'))}",
            f"task.data_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'data'))}",
            "train.progress=False", *split_overrides()]
  if FLAGS.token_budget < 0:
    raise app.UsageError(f"--token_budget must be >= 0, got {FLAGS.token_budget}")
  pool = Pool(FLAGS.jobs)
  try:
    records, sweep, sweep_runs, notes = _protocol(pool, common, seeds, grids, k)
  finally:
    pool.close()
  _write(records, sweep, sweep_runs, notes, seeds, grids, k)


def _protocol(pool: Pool, common: list[str], seeds: list[int], grids: dict[str, list[str]],
              k: int) -> tuple[list[dict], dict, list[dict], list[str]]:
  """Every run of the protocol, side by side on the pool where they do not wait on each
  other: (the records with test scores, each method's picked rate, the sweep's rows, the
  notes under its table)."""
  if FLAGS.jobs > 1:  # the splits and the warm start every job reads, written by one job
    _run(os.path.join(FLAGS.workdir, "prepare"),
         common + ["seed=0", "eval.num_problems=1", "eval.k=1"], mode="eval")
  if FLAGS.equal == "updates":
    FLAGS.token_budget = 0  # each method's own tokens: a column of the table
  elif not FLAGS.token_budget:
    FLAGS.token_budget = default_budget(common)
    print(f"token budget: {FLAGS.token_budget:,} generated tokens per training run", flush=True)

  def run(method, seed, lr, sweep=False):
    """train_run, announced with how far the protocol is when it is not finished yet."""
    if _record(method, seed, lr) is None:
      done, total, _ = progress(FLAGS.methods, grids, seeds)
      print(f"training run: {method}, lr {lr}, seed {seed} ({done} of {total} finished)",
            flush=True)
    return train_run(method, seed, lr, common, sweep=sweep)

  def run_and_test(method, seed, lr):
    return with_test(run(method, seed, lr), common)

  # Jobs that do not wait on each other go to the pool at once: the probes, then the base
  # model's scores and every method's sweep; a method's other seeds and its test scores
  # follow its pick, which needs its whole sweep (its picked runs' test scores go first).
  trained = [m for m in FLAGS.methods if m != "base"]
  pickers, others = seeds[:FLAGS.pick_seeds], seeds[FLAGS.pick_seeds:]
  sweep, sweep_runs, notes, tested = {}, [], [], {}
  if FLAGS.equal == "tokens":
    for probe in [pool.submit(tokens_per_iteration, m, common) for m in trained]:
      pool.result(probe)

  def pick_and_test(method, runs):
    """The method's pick from its finished sweep, and its test jobs queued: the picked runs'
    first in the queue, scored while this machine still has their checkpoints, which do not
    travel between machines (else they are trained again)."""
    tried = {lr: [f.result() for f in futures] for lr, futures in runs.items()}
    best_lr, rate_rows, method_notes = pick_rate(method, grids[method], tried, k, pickers)
    return best_lr, rate_rows, method_notes, (
        [pool.submit(with_test, r, common, priority=-1) for r in tried[best_lr]]
        + [pool.submit(run_and_test, method, seed, best_lr) for seed in others])

  with pool.held():  # each pick in place before a sweep's (recorded) runs can finish
    base = ([pool.submit(base_run, seed, common) for seed in seeds]
            if "base" in FLAGS.methods else [])
    sweeps = {m: {lr: [pool.submit(run, m, seed, lr, len(grids[m]) > 1) for seed in pickers]
                  for lr in grids[m]} for m in trained}
    # picked by the worker that finishes a sweep's last run, before it takes the next one
    picks = {m: pool.after([f for futures in sweeps[m].values() for f in futures],
                           pick_and_test, m, sweeps[m]) for m in trained}
  for method in trained:
    best_lr, rate_rows, method_notes, tested[method] = pool.result(picks[method])
    sweep[method] = f"{float(best_lr):g}"
    sweep_runs += rate_rows
    notes += method_notes
  records = ([pool.result(f) for f in base]
             + [pool.result(f) for method in trained for f in tested[method]])
  for r in records:
    again = r.get("trained_again")
    if again:
      notes.append(
          f"{r['method']} seed {r['seed']} (lr {r['lr']:g}): its checkpoint did not travel "
          "with its record; trained again for its test scores, " + (
              "it repeated itself." if again["repeated"] else
              f"on another machine: validation {100 * again['first_validation']:.1f}% -> "
              f"{100 * r['validation']:.1f}%, generated tokens "
              f"{again['first_generated_tokens']:,} -> {r['generated_tokens']:,}; its row is "
              "the second run's (the pick stays the first's)."))
  return records, sweep, sweep_runs, notes


def _write(records: list[dict], sweep: dict, sweep_runs: list[dict], notes: list[str],
           seeds: list[int], grids: dict[str, list[str]], k: int) -> None:
  """The table (markdown), the raw numbers (JSON) and the learning curves (PNG)."""
  rows = summarize(records, FLAGS.test_k, FLAGS.temperatures)
  problems = len(records[0]["test"]["per_problem"]) if records else 0
  test_k, pickers = FLAGS.test_k, seeds[:FLAGS.pick_seeds]
  header = _header(grids, problems, pickers, k)
  table = markdown(rows, test_k, header, FLAGS.temperatures)
  table += sweep_table(grids, sweep_runs, k, pickers, notes)
  out = FLAGS.out or os.path.join("results", f"{_task_name()}_{FLAGS.preset}.md")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    f.write(table)
  stem = os.path.splitext(out)[0]
  with open(stem + ".json", "w") as f:
    # each run's per-problem test scores stay (runs[].test.per_problem, the split's order)
    runs = [{key: value for key, value in r.items()
             if key not in ("validation_per_problem", "lr_text", "final_test")}
            for r in records]
    json.dump({"equal": FLAGS.equal, "budget": FLAGS.token_budget, "rows": rows, "runs": runs,
               "sweep": sweep, "sweep_runs": sweep_runs, "grids": grids,
               "methods": {m: METHODS[m] for m in sweep}, "overrides": FLAGS.set}, f, indent=1)
  plot(records, sweep, k, str(_eval_temperature()), stem + ".png")
  print(table)
  print(f"wrote {out}, {stem}.json, {stem}.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
