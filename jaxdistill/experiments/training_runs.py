"""A comparison's training runs: the methods it can train, each run's configuration at the
token budget (or the preset's updates), its workdir, its record scored on validation, how far
the protocol is from the records alone, and a picked run's test scores (trained again where
its checkpoint did not travel with its record)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from jaxdistill import methods as registry
from jaxdistill.experiments import evaluations, settings
from jaxdistill.experiments.sweep import best_rate


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
    # the first port of DeepSearch, as the tiny4 tables' deepsearch rows trained it: PPO
    # with clip-higher 0.2 / 0.28, dual clip 10, token-mean and no KL, but one update per
    # batch (ratio 1, the clip never acts), the value loss on, no weight decay, clip 0.1,
    # and rounds that never come back (a fresh pool of 256 each round)
    "deepsearch": ["algo=deepsearch", "learner.policy_loss=ppo", "learner.ppo_eps=0.2",
                   "learner.ppo_eps_high=0.28", "learner.dual_clip=10.0",
                   "learner.loss_aggregation=token", "learner.kl_coef=0.0",
                   "learner.minibatches=1", "learner.value_coef=1.0",
                   "learner.weight_decay=0.0", "learner.clip_norm=0.1",
                   "deepsearch.filter_pool=256", "deepsearch.pool_rounds=1"],
}
# DeepSearch as published (issue 54): the method's own learner (method_learner.deepsearch)
# and rounds that come back, one row per advantage rule; the rule is named, not left to the
# default, so a record keeps meaning what it was trained as
METHODS |= {f"ds_{rule}": ["algo=deepsearch", f"deepsearch.advantage={rule}"]
            for rule in ("tree_grpo", "outcome", "node_mean")}
# mcts_distill at the search settings issue 53 picked on training problems (docs/results.md,
# "Search settings that reach the answers on tiny4"): a pessimistic first-play value, so
# pUCT goes deep and every tree reaches the answer depth, and identical candidates merged
METHODS["mcts_reach"] = ["algo=mcts_distill", "search.first_play_value=-1.0",
                         "search.dedup_children=True"]
# mcts_tree, its children cut at the rollouts' most uncertain tokens (EPTree)
METHODS["mcts_entropy"] = METHODS["mcts_tree"] + ["search.branch_at=entropy"]
# mcts_tree (some 130 value targets per update, not 8) with the value head at its own rate
METHODS["mcts_tree_value_lr"] = METHODS["mcts_tree"] + ["learner.value_learning_rate=1e-3"]


def tokens_per_iteration(method: str, common: list[str]) -> float:
  """Generated tokens per iteration of a method, from a probe of the base model (2
  iterations, or what the method's cost needs: a whole DeepSearch round with its filter)."""
  FLAGS = settings.FLAGS
  probe = os.path.join(FLAGS.workdir, f"probe-{method}")
  from jaxdistill.configs import countdown as presets
  config = presets.apply_overrides(settings.config(), METHODS[method])
  iterations = registry.get(config.algo).probe_iterations(config)

  def make():
    evaluations.run_job(probe, common + METHODS[method] + [
        f"train.num_iterations={iterations}", "eval.every=0", "eval.at_start=False"])
    rows = [r for r in evaluations.metrics_rows(probe) if "generated_tokens" in r]
    shutil.rmtree(os.path.join(probe, "checkpoints"), ignore_errors=True)
    return float(np.mean([r["generated_tokens"] for r in rows]))
  return evaluations.cached_json(os.path.join(FLAGS.workdir, f"probe-{method}.json"), make)


# generated tokens of the tiny preset's own mcts_distill run: 3x the 474,186 its 64 dense-reward
# iterations sampled in the first comparison (results/countdown_tiny.md; --token_budget=474186
# --set=reward.dense=True repeats that one), the budget of the sparse-reward tables there
TINY_BUDGET = 1_422_558


def default_budget(common: list[str]) -> int:
  """The token budget when --token_budget is 0: the preset's mcts_distill run's tokens (on
  tiny the measured budget of the tables in results/; elsewhere an estimate from its probe:
  the policy's answers change length as it trains)."""
  FLAGS = settings.FLAGS
  if FLAGS.preset == "tiny":
    return TINY_BUDGET
  return round(tokens_per_iteration("mcts_distill", common)
               * settings.config().train.num_iterations)


def train_overrides(method: str, seed: int, lr: str, common: list[str]) -> list[str]:
  """A training run's config overrides: its method, seed and rate, the learning rate decaying
  to zero as the run reaches the token budget (--equal=updates: the preset's iterations),
  its own final test evaluation on the first --reference_problems problems (the reference's
  metric)."""
  FLAGS = settings.FLAGS
  if FLAGS.equal == "updates":
    expected = settings.config().train.num_iterations
    budget = [f"train.num_iterations={expected}"]
  else:
    expected = max(1, round(FLAGS.token_budget / tokens_per_iteration(method, common)))
    budget = [f"train.num_iterations={3 * expected}", f"train.token_budget={FLAGS.token_budget}"]
  every = max(1, expected // FLAGS.curve_points)
  return common + METHODS[method] + [
      f"seed={seed}", f"learner.learning_rate={lr}", f"learner.decay_steps={expected}",
      *budget, "eval.at_start=False", f"eval.every={every}", "train.checkpoint_every=1000000",
      f"eval.num_problems={FLAGS.reference_problems}"]


def run_dir(method: str, seed: int, lr: str) -> str:
  """A training run's workdir (runs at equal updates apart from those at equal tokens)."""
  FLAGS = settings.FLAGS
  suffix = "-updates" if FLAGS.equal == "updates" else ""
  return os.path.join(FLAGS.workdir, f"{method}-lr{lr}-seed{seed}{suffix}")


def again_dir(method: str, seed: int, lr: str) -> str:
  """Where a picked run whose checkpoint did not travel is trained again (`trained_again`)."""
  return run_dir(method, seed, lr) + "-again"


def train_run(method: str, seed: int, lr: str, common: list[str], sweep: bool = False,
              workdir: str | None = None) -> dict:
  """One training run at the token budget, scored on validation (its own final evaluation;
  sweep: with each validation problem's score, "validation_per_problem", to pair the rates of
  a sweep). No test score: `with_test` adds it once the rate is picked. workdir: in place of
  the run's own (`run_dir`)."""
  workdir = workdir or run_dir(method, seed, lr)
  overrides = train_overrides(method, seed, lr, common)

  def make():
    wall = evaluations.run_job(workdir, overrides)
    rows = evaluations.metrics_rows(workdir)
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
  record = (evaluations.cached_json(os.path.join(workdir, "compare_run.json"), make)
            | {"lr_text": lr})
  if sweep:  # "validation" is the run's last val_ evaluation, at the reference temperature
    record["validation_per_problem"] = evaluations.final_per_problem(
        workdir, "val_after.json", overrides, str(settings.eval_temperature()), "validation")
  return record


def record_of(method: str, seed: int, lr: str) -> dict | None:
  """A finished training run's record, or None."""
  path = os.path.join(run_dir(method, seed, lr), "compare_run.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def progress(methods: list[str], grids: dict[str, list[str]],
             seeds: list[int]) -> tuple[int, int, list[str]]:
  """How far the protocol's training runs are, from the files in --workdir alone (no job is
  run, no test score read): (finished, in all, lines: per method its runs, the rate it
  picked once its sweep is complete, the mean time of its training jobs so far, and how
  far each of its runs under way got; then the runs left, with the hours they take at that
  mean)."""
  FLAGS = settings.FLAGS
  pickers, rest = seeds[:FLAGS.pick_seeds], seeds[FLAGS.pick_seeds:]
  finished = total = 0
  lines, walls = [], []
  for method in (m for m in methods if m != "base"):
    grid = grids[method]
    # (rate, seed) -> its record or None: the sweep's runs, then the other seeds at the pick
    planned = {(lr, seed): record_of(method, seed, lr) for lr in grid for seed in pickers}
    picked = None
    if all(planned.values()):
      picked = best_rate({lr: [planned[lr, seed] for seed in pickers] for lr in grid})
      planned |= {(picked, seed): record_of(method, seed, picked) for seed in rest}
    kept = [r for r in planned.values() if r]
    runs = len(grid) * len(pickers) + len(rest)
    finished, total = finished + len(kept), total + runs
    # a resumed run's wall_s is its last process's; its train_s (the training clock, which
    # goes on across resumes) is then the larger, and closer to what a whole run takes
    mine = [max(r["wall_s"], r.get("train_s", 0.0)) for r in kept]
    walls += mine
    lines.append(f"{method}: {len(kept)}/{runs} training runs, "
                 + (f"rate picked: {float(picked):g}" if picked else
                    f"rate not picked yet (from {', '.join(grid)})")
                 + (f", {np.mean(mine) / 60:.0f} min per training job"
                    if kept else ""))
    for (lr, seed), record in planned.items():
      got = record is None and _under_way(run_dir(method, seed, lr))
      if got:
        lines.append(f"  under way: lr {lr}, seed {seed}, {got}")
  if total > finished:
    lines.append(f"{total - finished} training runs left" + (
        f", about {(total - finished) * np.mean(walls) / 3600 / FLAGS.jobs:.1f} hours at "
        f"{np.mean(walls) / 60:.0f} min per job so far and --jobs={FLAGS.jobs}" if walls else ""))
  return finished, total, lines


def _under_way(workdir: str) -> str | None:
  """How far a training run got before it finished (or was stopped), from its metrics and
  configuration; None before its first update."""
  rows = {r["step"]: r for r in evaluations.metrics_rows(workdir) if "loss" in r}
  path = os.path.join(workdir, "config.json")
  if not rows or not os.path.exists(path):
    return None
  train = evaluations.read_json(path)["train"]
  if train.get("token_budget"):
    tokens = sum(r["generated_tokens"] for r in rows.values())
    return (f"{tokens:,.0f} of {train['token_budget']:,} generated tokens "
            f"({100 * tokens / train['token_budget']:.0f}%)")
  return f"{max(rows)} of {train['num_iterations']} updates"


def has_checkpoint(workdir: str) -> bool:
  checkpoints = os.path.join(workdir, "checkpoints")
  return os.path.isdir(checkpoints) and bool(os.listdir(checkpoints))


def trained_again(record: dict, common: list[str]) -> dict:
  """The record of a finished run trained again in a workdir of its own (`<run>-again`), for
  a run whose checkpoint is gone and whose test scores were not all made: records travel in
  git between machines, checkpoints do not, and `--mode=eval` without a checkpoint would
  score the initial model as if it were the trained one. Same configuration and seed; on
  another machine its numbers differ in the last bits, and so in time its samples: the
  record says whether it repeated the first ("trained_again"). The first run's record, which
  took part in picking the rate, is never touched, so the pick cannot move."""
  method, seed, lr = record["method"], record["seed"], record["lr_text"]
  first, again = run_dir(method, seed, lr), again_dir(method, seed, lr)
  path = os.path.join(again, "compare_run.json")
  if os.path.exists(path) and not has_checkpoint(again):
    try:  # scored already (its scores are read back); else its checkpoint is gone too
      evaluations.test_scores(again, train_overrides(method, seed, lr, common), cached_only=True)
    except evaluations.NotCached:
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
  (`trained_again`), whose record, scores and curve are then the row's. A record tested
  already is returned as it is (testing it again would retrain a record whose row came from
  `trained_again`, and call it repeated)."""
  if "test" in record:
    return record
  method, seed, lr = record["method"], record["seed"], record["lr_text"]
  workdir, again = run_dir(method, seed, lr), again_dir(method, seed, lr)
  overrides = train_overrides(method, seed, lr, common)
  if not os.path.exists(os.path.join(again, "compare_run.json")):
    try:
      return record | {"test": evaluations.test_scores(
                           workdir, overrides, cached_only=not has_checkpoint(workdir)),
                       "reference": record["final_test"]}
    except evaluations.NotCached:
      pass
  run = trained_again(record, common)
  return run | {"test": evaluations.test_scores(again, overrides),
                "reference": run["final_test"]}


def keep_records(workdir: str, dest: str) -> list[str]:
  """Copies what a comparison in `workdir` needs to go on elsewhere into `dest`: the JSON and
  JSONL files of every finished run (a record, `compare_run.json`, beside them), of the base
  model's scores, the probes and the preparing job, the probes' results, and the warm start
  every run starts from; not checkpoints, tokenizers or the splits (rebuilt from the seed).
  A folder copied replaces its earlier copy in `dest` (a run trained again keeps no stale
  file); folders of `dest` not in `workdir` stay. Returns the folders copied."""
  kept = []
  for name in sorted(os.listdir(workdir)):
    source, target = os.path.join(workdir, name), os.path.join(dest, name)
    if name == "warm_start":
      shutil.rmtree(target, ignore_errors=True)
      shutil.copytree(source, target)
    elif os.path.isdir(source) and (
        os.path.exists(os.path.join(source, "compare_run.json"))
        or name.startswith(("base-seed", "probe-")) or name == "prepare"):
      shutil.rmtree(target, ignore_errors=True)
      os.makedirs(target)
      for file in sorted(os.listdir(source)):
        if file.endswith((".json", ".jsonl")) and os.path.isfile(os.path.join(source, file)):
          shutil.copy2(os.path.join(source, file), target)
    elif name.startswith("probe-") and name.endswith(".json"):
      os.makedirs(dest, exist_ok=True)
      shutil.copy2(source, target)
      continue
    else:
      continue
    kept.append(name)
  return kept
