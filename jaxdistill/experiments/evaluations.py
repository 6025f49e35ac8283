"""A comparison's jobs and scores: a `jaxdistill.main` job run from the comparison, its
cached evaluations (mean@k / pass@k on a split, per problem, over independent sets of sample
keys), the primary test score of a run, and the base model's scores."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from jaxdistill.experiments import settings
from jaxdistill.experiments.jobs import check_stopped, run_command
from jaxdistill.files import write_json


def metrics_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def run_job(workdir: str, overrides: list[str], mode: str = "train") -> float:
  """One jaxdistill.main job; returns its wall time in seconds. With --jobs > 1 its output
  goes to WORKDIR/job.log (jobs run side by side)."""
  FLAGS = settings.FLAGS
  check_stopped(training=mode == "train")  # a job after a stop (a training job after a
  # drain): not announced, no workdir made
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


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def cached_json(path: str, make):
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
  eval_settings = [f"eval.temperature={temperature}", f"eval.split={split}",
                   f"eval.num_problems={problems}"] + ([f"eval.k={k}"] if k else [])

  def make():
    run_job(workdir, common + eval_settings, mode="eval")
    with open(os.path.join(workdir, "eval_result.json")) as f:
      result = json.load(f)
    if per_problem and "per_problem" not in result:
      raise RuntimeError(f"{workdir}: the evaluation wrote no per-problem scores")
    return result
  path = os.path.join(workdir, f"eval_{split}_t{temperature}" + (f"_k{k}" if k else "")
                      + (f"_n{problems}" if problems != 100_000 else "")
                      + (f"_keys{key_set}" if key_set else "") + ".json")
  if cached_only and not (os.path.exists(path) and (not per_problem
                                                     or "per_problem" in read_json(path))):
    raise NotCached(path)
  result = cached_json(path, make)
  if per_problem and "per_problem" not in result:  # cached before they were recorded
    os.remove(path)
    result = cached_json(path, make)
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
  FLAGS = settings.FLAGS
  k, t0 = FLAGS.test_k, FLAGS.temperatures[0]
  test = {t: evaluate(workdir, overrides, t, k=k, per_problem=t == t0, cached_only=cached_only)
          for t in FLAGS.temperatures}
  per_problem = test[t0].pop("per_problem")
  if FLAGS.eval_key_sets > 1:
    extra = [evaluate(workdir, overrides, t0, key_set=r, k=k, cached_only=cached_only)
             for r in range(1, FLAGS.eval_key_sets)]
    test[t0] = pool_key_sets([test[t0]] + extra, k)
  return test | {"per_problem": per_problem}


def final_per_problem(workdir: str, name: str, overrides: list[str], temperature: str,
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


def base_run(seed: int, common: list[str]) -> dict:
  """The shared base model, scored with this seed's evaluation samples."""
  FLAGS = settings.FLAGS
  workdir = os.path.join(FLAGS.workdir, f"base-seed{seed}")
  overrides = common + [f"seed={seed}"]
  reference = evaluate(workdir, overrides, str(settings.eval_temperature()),
                       problems=FLAGS.reference_problems)
  validation = evaluate(workdir, overrides, str(settings.eval_temperature()), "validation",
                        per_problem=True)
  record = {"method": "base", "seed": seed, "generated_tokens": 0, "iterations": 0,
            "validation": validation["mean@" + str(settings.eval_k())],
            "test": test_scores(workdir, overrides), "reference": reference}
  # a run's learning curve scores only the first eval.curve_problems validation problems,
  # which need not be as hard as the whole split: the base model's level on those same ones
  curve_problems = settings.config().eval.curve_problems
  if curve_problems:
    record["curve_validation"] = float(np.mean(validation["per_problem"][:curve_problems]))
  return record

