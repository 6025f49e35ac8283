"""Countdown verifier speed: completions graded per second on one core, worst-case latency.

    python -m jaxdistill.bench.verifier

Typical completions are solver step solutions plus wrong and malformed variants; the
adversarial set holds <= 2,000-character completions built to be slow (deep parentheses,
1,000-digit literals, long operator chains, unicode). The issue's bound: < 10 ms each.
"""

from __future__ import annotations

import random
import time

from absl import app, flags

from jaxdistill.bench.common import print_table, write_json
from jaxdistill.tasks import countdown

flags.DEFINE_integer("problems", 2000, "problems in the typical set")
flags.DEFINE_string("out", "bench_results/verifier.json", "JSON output")
FLAGS = flags.FLAGS


def typical_completions(n: int):
  rng = random.Random(0)
  rows = []
  for p in countdown.generate(n, seed=5):
    steps = countdown.solution_steps(p.numbers, p.target)
    rows.append((steps, p))
    rows.append((steps.replace("+", "*", 1), p))
    rows.append((steps[: rng.randint(0, len(steps))], p))
  return rows


def adversarial_completions():
  p = countdown.Problem((3, 5, 7, 2), 24)
  a = lambda body: f"<answer>{body}</answer>"
  bodies = [
      "(" * 999 + "3" + ")" * 999,
      "(" * 1990,
      "9" * 1000 + "*" + "9" * 980,
      "3" + "+3" * 990,
      "3/" * 660 + "5",
      "7" + "-(5" * 400 + ")" * 400,
      "".join(chr(0x1F600 + i % 80) for i in range(1980)),
      "²" * 1980,
      "<answer>" * 180,
      "3 " * 990,
  ]
  rows = [(a(b)[:2000], p) for b in bodies]
  rows.append(("<answer>" * 250, p))
  rows.append(("</answer>" * 222, p))
  return rows


def measure(rows):
  latencies = []
  start = time.perf_counter()
  for text, p in rows:
    t = time.perf_counter()
    countdown.reward(text, p.numbers, p.target)
    latencies.append(time.perf_counter() - t)
  total = time.perf_counter() - start
  latencies.sort()
  return {"completions": len(rows), "per_second": len(rows) / total,
          "median_ms": 1e3 * latencies[len(latencies) // 2], "max_ms": 1e3 * latencies[-1],
          "max_chars": max(len(t) for t, _ in rows)}


def main(argv):
  del argv
  rows = [{"set": "typical", **measure(typical_completions(FLAGS.problems))},
          {"set": "adversarial", **measure(adversarial_completions())}]
  print_table(rows, ["set", "completions", "per_second", "median_ms", "max_ms", "max_chars"])
  write_json(FLAGS.out, {"rows": rows})


if __name__ == "__main__":
  app.run(main)
