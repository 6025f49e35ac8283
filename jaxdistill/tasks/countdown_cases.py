"""Completions that exercise the Countdown verifier, for checking its device form against
it (`Countdown.reward_cases`, `python -m jaxdistill.bench.device_reward`): hand-picked hard
cases, solver-written solutions, solutions with random edits, random expressions inside answer
tags and random text over the characters the verifier reads."""

from __future__ import annotations

import random

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
