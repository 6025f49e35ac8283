"""First training iteration with a cold and a warm persistent compilation cache.

    python -m jaxdistill.bench.compile_cache [--preset smoke] [--algos mcts_distill,cispo]

Runs `jaxdistill.main` twice per method in fresh workdirs that share one new cache
directory (`--config.compile_cache_dir`): the first run compiles everything, the second
finds what the first stored. Reports the first iteration's seconds (compile + run, from
metrics.jsonl) and the whole process's wall time, cold and warm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from jaxdistill.bench.common import print_table, write_json


def define_flags():
  """The command's flags, defined only when it runs (its functions may be imported beside
  other commands' flags, such as jaxdistill.main's --out)."""
  flags.DEFINE_string("preset", "smoke", "config preset")
  flags.DEFINE_list("algos", ["mcts_distill", "cispo"], "methods")
  flags.DEFINE_list("set", ["sft.steps=0", "eval.at_start=False", "eval.every=0",
                            "train.num_iterations=2", "train.progress=False"],
                    "config overrides (field=value)")
  flags.DEFINE_string("out", "bench_results/compile_cache.json", "JSON output")


FLAGS = flags.FLAGS


def _run(algo: str, workdir: str, cache: str) -> tuple[float, float]:
  """(first iteration seconds, process seconds) of one CLI run."""
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config", f"countdown.py:{FLAGS.preset}",
         f"--workdir={workdir}", f"--config.algo={algo}", f"--config.compile_cache_dir={cache}"]
  cmd += [f"--config.{item}" for item in FLAGS.set]
  start = time.perf_counter()
  result = subprocess.run(cmd, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(result.stderr[-2000:])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    first = next(json.loads(line) for line in f if "loss" in json.loads(line))
  return first["elapsed_s"], wall


def main(argv):
  del argv
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    for algo in FLAGS.algos:
      cache = os.path.join(scratch, f"cache-{algo}")
      cold = _run(algo, os.path.join(scratch, f"{algo}-cold"), cache)
      warm = _run(algo, os.path.join(scratch, f"{algo}-warm"), cache)
      rows.append({"algo": algo, "first_iteration_cold_s": cold[0],
                   "first_iteration_warm_s": warm[0], "process_cold_s": cold[1],
                   "process_warm_s": warm[1]})
  print(f"preset {FLAGS.preset}, overrides {' '.join(FLAGS.set)}")
  print_table(rows, ["algo", "first_iteration_cold_s", "first_iteration_warm_s",
                     "process_cold_s", "process_warm_s"])
  write_json(FLAGS.out, {"preset": FLAGS.preset, "overrides": FLAGS.set, "rows": rows})


if __name__ == "__main__":
  define_flags()
  app.run(main)
