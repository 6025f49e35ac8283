"""DeepSearch's rounds in one run, read off its metrics.jsonl: what each round's filter
scored and kept, the share of its prompts answered from the replay buffer (the paper's
Table 6: 0%, 5.6%, 13.4%, 23.2%, 33.2% over five rounds) and the filter's share of the
round's generated tokens.

    python -m jaxdistill.experiments.deepsearch_rounds --run WORKDIR [--out rounds.json]
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from jaxdistill.bench.common import print_table

COLUMNS = ["round", "first_step", "iterations", "revisit", "scored", "kept", "filter_pass",
           "prompts", "replayed", "replayed_share", "generated_tokens", "filter_tokens",
           "filter_share"]


def define_flags():
  flags.DEFINE_string("run", None, "a deepsearch run's workdir (its metrics.jsonl)")
  flags.DEFINE_string("out", "", "JSON output (default: print only)")


FLAGS = flags.FLAGS


def rounds(rows: list[dict]) -> list[dict]:
  """One row per round (a round starts at an update whose metrics carry the filter's):
  its prompts, how many were replayed, its tokens and the filter's share of them. The
  update rows' generated_tokens already include their filter's tokens."""
  table = []
  for row in rows:
    if "loss" not in row:  # evaluation rows
      continue
    if "filter_tokens" in row or not table:
      table.append({"round": len(table), "first_step": row["step"], "iterations": 0,
                    "revisit": bool(row.get("filter_revisit", 0.0)),
                    "scored": row.get("filter_scored"), "kept": row.get("filter_kept"),
                    "filter_pass": row.get("filter_pass"), "prompts": 0.0, "replayed": 0.0,
                    "generated_tokens": 0.0, "filter_tokens": row.get("filter_tokens", 0.0)})
    current = table[-1]
    current["iterations"] += 1
    current["prompts"] += row.get("prompts_replayed", 0.0) + row.get("prompts_searched", 0.0)
    current["replayed"] += row.get("prompts_replayed", 0.0)
    current["generated_tokens"] += row["generated_tokens"]
  for current in table:
    current["replayed_share"] = current["replayed"] / max(current["prompts"], 1.0)
    current["filter_share"] = current["filter_tokens"] / max(current["generated_tokens"], 1.0)
  return table


def main(argv):
  del argv
  if not FLAGS.run:
    raise app.UsageError("--run=WORKDIR is required")
  path = os.path.join(FLAGS.run, "metrics.jsonl")
  if not os.path.exists(path):
    raise app.UsageError(f"no metrics.jsonl in {FLAGS.run}")
  table = rounds([json.loads(line) for line in open(path)])
  print_table(table, COLUMNS)
  tokens = sum(r["generated_tokens"] for r in table)
  filtered = sum(r["filter_tokens"] for r in table)
  print(f"\n{len(table)} rounds, {tokens:,.0f} generated tokens, the filter's "
        f"{filtered / max(tokens, 1):.1%}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump({"run": FLAGS.run, "rounds": table}, f, indent=2)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
