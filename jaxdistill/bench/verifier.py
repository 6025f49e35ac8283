"""A task's verifier speed: completions graded per second on one core, worst-case latency.

    python -m jaxdistill.bench.verifier [--config countdown.py:PRESET]

Typical completions are the task's demonstrations (its solver's solutions) plus wrong and
cut-off variants; the adversarial set is the task's `stress_completions` (<= 2,000
characters built to be slow: deep parentheses, 1,000-digit literals, long operator chains,
unicode). The bound the verifier is held to: < 10 ms each.
"""

from __future__ import annotations

import random
import tempfile
import time

from absl import app, flags

from jaxdistill.bench.common import load_preset, print_table, write_json


def define_flags():
  """The command's flags, defined only when it runs (its functions may be imported beside
  other commands' flags, such as jaxdistill.main's --out)."""
  flags.DEFINE_string("config", "countdown.py:tiny4", "config file and preset (its task "
                      "section picks the task)")
  flags.DEFINE_integer("problems", 2000, "problems in the typical set")
  flags.DEFINE_string("out", "bench_results/verifier.json", "JSON output")


FLAGS = flags.FLAGS


def typical_completions(task, problems, seed: int = 0):
  """(completion, problem): each demonstration, one with a character changed, one cut."""
  rng = random.Random(seed)
  rows = []
  for problem in problems:
    text = task.demonstration(problem)
    if text is None:
      continue
    at = rng.randrange(len(text))
    rows.append((text, problem))
    rows.append((text[:at] + ("*" if text[at] != "*" else "+") + text[at + 1:], problem))
    rows.append((text[:rng.randint(0, len(text))], problem))
  return rows


def measure(task, rows):
  latencies = []
  start = time.perf_counter()
  for text, problem in rows:
    t = time.perf_counter()
    task.reward(text, problem, True)
    latencies.append(time.perf_counter() - t)
  total = time.perf_counter() - start
  latencies.sort()
  return {"completions": len(rows), "per_second": len(rows) / total,
          "median_ms": 1e3 * latencies[len(latencies) // 2], "max_ms": 1e3 * latencies[-1],
          "max_chars": max(len(t) for t, _ in rows)}


def main(argv):
  del argv
  from jaxdistill import tasks
  task = tasks.from_config(load_preset(FLAGS.config))
  with tempfile.TemporaryDirectory() as directory:
    problems, _, _ = task.splits(directory, 5, FLAGS.problems, 0, 1)
  adversarial = [(text, problems[0]) for text in task.stress_completions(problems[0])]
  rows = [{"set": "typical", **measure(task, typical_completions(task, problems))},
          {"set": "adversarial", **measure(task, adversarial)}]
  print_table(rows, ["set", "completions", "per_second", "median_ms", "max_ms", "max_chars"])
  write_json(FLAGS.out, {"task": task.name, "rows": rows})


if __name__ == "__main__":
  define_flags()
  app.run(main)
