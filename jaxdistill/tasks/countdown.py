"""Countdown: reach a target by combining numbers with + - * /.

The engine's Task: prompts, an exact verifier that grades only the generated text, sparse
and dense rewards, and a solver that also writes step-by-step solutions for the warm start.
Problems, the generator and the splits live in `countdown_data` and are part of this
module's interface (`countdown.generate`, `countdown.make_splits`, ...).
`python -m jaxdistill.tasks.countdown` writes and inspects JSONL datasets.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
from fractions import Fraction
from typing import Sequence

from jaxdistill.tasks.base import STRESS_BODIES, Task
from jaxdistill.tasks.countdown_data import (  # noqa: F401  (the task's data interface)
    SPLITS, DataError, Problem, SplitTooLarge, cached_splits, file_splits, generate,
    make_problem, make_splits, problem_space, read_jsonl, read_problems, split_problems,
    write_jsonl)
from jaxdistill.tasks.expression import ExpressionError, evaluate_postfix, to_postfix, tokenize
from jaxdistill.tasks.format import ASSISTANT, USER

ANSWER_START, ANSWER_END = "<answer>", "</answer>"
SYSTEM_PROMPT = (
    "You combine numbers with +, -, * and / to reach a target. Think in short steps; write "
    "each one as <step>a op b = c</step>, for example <step>6 * 4 = 24</step>. Use each "
    "given number at most once. Finish with exactly one <answer>expression</answer> that "
    "uses only the given numbers, for example <answer>(6 * 4) - 3</answer>.")



@dataclasses.dataclass(frozen=True)
class Countdown(Task):
  """Countdown as the engine's Task: `numbers` numbers in [1, 13] per problem. Compared and
  hashed by value, so compiled programs keyed on a task are shared by equal ones."""

  name = "countdown"
  numbers: int = 4
  data_path: str = ""  # problems from this file (JSONL or parquet), not the generator
  # the dense reward of an answer that is there but malformed (a missing one: -1)
  malformed_reward: float = -1.0

  @classmethod
  def from_config(cls, section):
    return cls(numbers=section.numbers, data_path=section.data_path,
               malformed_reward=section.get("malformed_reward", -1.0))

  def splits(self, directory, seed, train_size, validation_size, test_size):
    if self.data_path:
      return file_splits(directory, self.data_path, seed, train_size, validation_size,
                         test_size)
    return cached_splits(directory, seed, train_size, validation_size, test_size,
                         self.numbers)

  def capacity(self):
    return None if self.data_path else len(problem_space(self.numbers))

  def prompt(self, problem, tokenizer, style):
    if style == "chat":
      return chat_prompt(tokenizer, problem.numbers, problem.target)
    return compact_prompt(problem.numbers, problem.target)

  def reward(self, completion, problem, dense):
    return reward(completion, problem.numbers, problem.target, dense=dense,
                  malformed_reward=self.malformed_reward)

  def device_reward(self, tokenizer, dense):
    if type(self).reward is not Countdown.reward:  # a subclass grading its own way
      return None
    from jaxdistill.tasks import countdown_device
    return countdown_device.DeviceReward(countdown_device.cached_token_table(tokenizer), dense,
                                         self.malformed_reward)

  def reward_cases(self, problems, count, seed=0):
    from jaxdistill.tasks import countdown_cases
    return countdown_cases.completions(self, problems, count, seed)

  def stress_completions(self, problem):
    # inside answer tags, where the parser works; and the tags themselves repeated
    wrapped = [f"{ANSWER_START}{body}{ANSWER_END}"[:2000] for body in STRESS_BODIES]
    return wrapped + [ANSWER_START * 180, ANSWER_START * 250, ANSWER_END * 222]

  def demonstration(self, problem):
    return solution_steps(problem.numbers, problem.target)

  def describe(self, problem):
    return {"numbers": list(problem.numbers), "target": problem.target}




# ----------------------------------------------------------------------------- prompts

def user_message(numbers: Sequence[int], target: int) -> str:
  """The task statement shown to an instruct model."""
  return (f"Numbers: {' '.join(map(str, numbers))}\nTarget: {target}\n"
          "Reach the target.")


def chat_prompt(tokenizer, numbers: Sequence[int], target: int) -> str:
  """Prompt text for an instruct tokenizer, through its chat template."""
  messages = [{"role": "system", "content": SYSTEM_PROMPT},
              {"role": "user", "content": user_message(numbers, target)}]
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def compact_prompt(numbers: Sequence[int], target: int) -> str:
  """Short prompt for the character tokenizer (its chat template wraps the user turn)."""
  return f"{USER}Numbers: {' '.join(map(str, numbers))}\nTarget: {target}\n{ASSISTANT}"


# ----------------------------------------------------------------------------- verifier

@dataclasses.dataclass(frozen=True)
class Grade:
  """What the verifier found in a completion."""

  valid: bool
  value: Fraction | None
  correct: bool
  reason: str  # '' when valid


def extract_answer(completion: str) -> str | None:
  """The text inside the last <answer>...</answer>, or None."""
  end = completion.rfind(ANSWER_END)
  if end < 0:
    return None
  start = completion.rfind(ANSWER_START, 0, end)
  if start < 0:
    return None
  return completion[start + len(ANSWER_START):end]


def _is_sub_multiset(used: Sequence[int], available: Sequence[int]) -> bool:
  remaining = collections.Counter(available)
  remaining.subtract(used)
  return min(remaining.values(), default=0) >= 0 and len(used) <= len(available)


def grade(completion: str, numbers: Sequence[int], target: int, *, require_all: bool = False,
          integer_intermediates: bool = False) -> Grade:
  """Grade only the generated text; never raises on any string."""
  answer = extract_answer(completion)
  if answer is None:
    return Grade(False, None, False, "no <answer>...</answer>")
  try:
    tokens = tokenize(answer)
    literals = [t for t in tokens if isinstance(t, int)]
    # numbers first: it bounds the arithmetic below to a few small literals
    if not _is_sub_multiset(literals, numbers):
      raise ExpressionError(f"uses numbers {literals} beyond {list(numbers)}")
    if require_all and sorted(literals) != sorted(numbers):
      raise ExpressionError(f"does not use all of {list(numbers)}")
    evaluation = evaluate_postfix(to_postfix(tokens))
    if integer_intermediates and not evaluation.integer_intermediates:
      raise ExpressionError("a fractional intermediate result")
  except ExpressionError as e:
    return Grade(False, None, False, str(e))
  return Grade(True, evaluation.value, evaluation.value == target, "")


def reward(completion: str, numbers: Sequence[int], target: int, dense: bool = True, *,
           invalid_reward: float = -1.0, distance_weight: float = 2.0,
           require_all: bool = False, integer_intermediates: bool = False,
           malformed_reward: float | None = None) -> float:
  """Sparse: 1.0 on the target else 0.0. Dense: 1 - w*min(|t-p|/t, 1); no answer ->
  invalid_reward (-1.0); an answer that does not parse or uses other numbers ->
  malformed_reward (default: invalid_reward; the reference's grader gives -0.9)."""
  result = grade(completion, numbers, target, require_all=require_all,
                 integer_intermediates=integer_intermediates)
  if not dense:
    return 1.0 if result.correct else 0.0
  if not result.valid:
    if malformed_reward is not None and extract_answer(completion) is not None:
      return float(malformed_reward)
    return float(invalid_reward)
  distance = abs(Fraction(target) - result.value) / abs(target) if target else (
      Fraction(0) if result.value == 0 else Fraction(1))
  return float(1 - distance_weight * min(distance, Fraction(1)))


# ----------------------------------------------------------------------------- solver

def _combine(a, b, op: str, integer_only: bool):
  """a op b, or None where the rule forbids it (integer mode: positive integers only)."""
  if op == "+":
    return a + b
  if op == "*":
    return a * b
  if op == "-":
    return a - b if (a > b or not integer_only) else None
  if integer_only:
    return a // b if b and a % b == 0 else None
  return a / b if b else None


def _search(items: list[tuple], target, integer_only: bool, use_all: bool):
  """Depth-first: combine two items until one equals target; returns (expr, steps)."""
  for value, expr, steps in items:
    if value == target and (len(items) == 1 or not use_all):
      return expr, steps
  if len(items) < 2:
    return None
  for i, j in itertools.combinations(range(len(items)), 2):
    rest = [x for k, x in enumerate(items) if k not in (i, j)]
    for (a, ea, sa), (b, eb, sb) in ((items[i], items[j]), (items[j], items[i])):
      for op in "+-*/":
        if op in "+*" and a < b:
          continue  # commutative: one order is enough
        value = _combine(a, b, op, integer_only)
        if value is None:
          continue
        step = (a, op, b, value)
        found = _search(rest + [(value, f"({ea} {op} {eb})", sa + sb + (step,))], target,
                        integer_only, use_all)
        if found:
          return found
  return None


def _solve(numbers: Sequence[int], target: int):
  # prefer all numbers and positive-integer intermediates (plain ints: fast, and valid
  # under every verifier rule); then rational intermediates; then subsets of the numbers
  for integer_only, use_all in ((True, True), (False, True), (False, False)):
    cast = int if integer_only else Fraction
    items = [(cast(n), str(n), ()) for n in numbers]
    found = _search(items, cast(target), integer_only, use_all)
    if found:
      expr, steps = found
      return (expr[1:-1] if expr.startswith("(") and expr.endswith(")") else expr), steps
  return None


def _fmt(x) -> str:
  x = Fraction(x)
  return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def solve(numbers: Sequence[int], target: int) -> str | None:
  """A valid expression reaching target with each number at most once, or None."""
  found = _solve(numbers, target)
  return found[0] if found else None


def solution_steps(numbers: Sequence[int], target: int) -> str | None:
  """The solver's solution as `<step>a op b = c</step>` lines and a final answer."""
  found = _solve(numbers, target)
  if not found:
    return None
  expr, steps = found
  lines = [f"<step>{_fmt(a)} {op} {_fmt(b)} = {_fmt(c)}</step>" for a, op, b, c in steps]
  return "\n".join(lines + [f"{ANSWER_START}{expr}{ANSWER_END}"])


def target_statistics(problems: Sequence[Problem]) -> dict:
  """min / median / 90th percentile / max of the targets."""
  targets = sorted(p.target for p in problems)
  pick = lambda q: targets[min(len(targets) - 1, int(q * (len(targets) - 1) + 0.5))]
  return {"count": len(targets), "min": targets[0], "median": pick(0.5), "p90": pick(0.9),
          "max": targets[-1], "share_le_100": sum(t <= 100 for t in targets) / len(targets)}


def _main(argv):
  from absl import flags
  del argv
  FLAGS = flags.FLAGS
  if FLAGS.inspect:
    for path in FLAGS.inspect:
      print(path, target_statistics(read_jsonl(path)))
    return
  splits = cached_splits(FLAGS.out, FLAGS.seed, FLAGS.train_size, FLAGS.validation_size,
                         FLAGS.test_size, count=FLAGS.numbers)
  for name, split in zip(SPLITS, splits):
    print(f"{os.path.join(FLAGS.out, name + '.jsonl')}: {len(split)} problems",
          target_statistics(split) if split else "")
  test = splits[-1]
  for p in test[:3]:
    print(p.numbers, p.target, "->", solve(p.numbers, p.target))


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out", "data/countdown", "where train/validation/test.jsonl go")
  flags.DEFINE_integer("seed", 0, "generator seed")
  flags.DEFINE_integer("train_size", 20_000, "train problems")
  flags.DEFINE_integer("validation_size", 256, "validation problems")
  flags.DEFINE_integer("test_size", 820, "held-out problems")
  flags.DEFINE_integer("numbers", 4, "numbers per problem (the tiny preset uses 3)")
  flags.DEFINE_multi_string("inspect", None, "print target statistics of these JSONL files")
  app.run(_main)
