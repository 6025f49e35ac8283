"""Countdown: reach a target by combining numbers with + - * /.

Problem generator (deterministic for a seed), prompts, an exact verifier that grades only
the generated text, sparse and dense rewards, and a solver that also writes step-by-step
solutions for the warm start. `python -m jaxdistill.tasks.countdown` writes and inspects
JSONL datasets.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import os
import random
from fractions import Fraction
from typing import Iterable, Sequence

from jaxdistill.errors import UsageError
from jaxdistill.tasks.base import Task
from jaxdistill.tasks.expression import ExpressionError, evaluate_postfix, to_postfix, tokenize
from jaxdistill.tasks.format import ASSISTANT, USER

ANSWER_START, ANSWER_END = "<answer>", "</answer>"
SYSTEM_PROMPT = (
    "You combine numbers with +, -, * and / to reach a target. Think in short steps; write "
    "each one as <step>a op b = c</step>, for example <step>6 * 4 = 24</step>. Use each "
    "given number at most once. Finish with exactly one <answer>expression</answer> that "
    "uses only the given numbers, for example <answer>(6 * 4) - 3</answer>.")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One Countdown problem."""

  numbers: tuple[int, ...]
  target: int

  def key(self):
    """Identity for split disjointness: the multiset of numbers and the target."""
    return tuple(sorted(self.numbers)), self.target

  def to_json(self) -> str:
    return json.dumps({"numbers": list(self.numbers), "target": self.target})


@dataclasses.dataclass(frozen=True)
class Countdown(Task):
  """Countdown as the engine's Task: `numbers` numbers in [1, 13] per problem. Compared and
  hashed by value, so compiled programs keyed on a task are shared by equal ones."""

  name = "countdown"
  numbers: int = 4
  data_path: str = ""  # problems from this file (JSONL or parquet), not the generator

  @classmethod
  def from_config(cls, section):
    return cls(numbers=section.numbers, data_path=section.data_path)

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
    return reward(completion, problem.numbers, problem.target, dense=dense)

  def demonstration(self, problem):
    return solution_steps(problem.numbers, problem.target)

  def describe(self, problem):
    return {"numbers": list(problem.numbers), "target": problem.target}


# ----------------------------------------------------------------------------- generator

def _random_reduction(numbers: Sequence[int], rng: random.Random) -> int:
  """Combine all numbers by random operations with positive-integer intermediates."""
  values = list(numbers)
  while len(values) > 1:
    i, j = rng.sample(range(len(values)), 2)
    a, b = values[i], values[j]
    results = [a + b, a * b]
    if a > b:
      results.append(a - b)
    if b and a % b == 0:
      results.append(a // b)
    result = rng.choice(results)
    values = [v for k, v in enumerate(values) if k not in (i, j)] + [result]
  return values[0]


def make_problem(rng: random.Random, count: int = 4, low: int = 1, high: int = 13,
                 simulations: int = 64) -> Problem:
  """Random numbers; the target is the least frequent result of random reductions."""
  numbers = tuple(rng.randint(low, high) for _ in range(count))
  counts = collections.Counter(_random_reduction(numbers, rng) for _ in range(simulations))
  rarest = min(counts.values())
  target = rng.choice(sorted(v for v, c in counts.items() if c == rarest))
  return Problem(numbers, target)


@functools.lru_cache(maxsize=8)
def problem_space(count: int = 4, low: int = 1, high: int = 13) -> tuple[tuple, ...]:
  """Every problem key (sorted numbers, target) the generator can produce: each multiset of
  `count` numbers in [low, high] with each result of combining all of them by + - * / with
  positive-integer intermediates (`_random_reduction`'s operations), sorted."""

  @functools.lru_cache(maxsize=None)
  def results(values: tuple) -> frozenset:
    if len(values) == 1:
      return frozenset(values)
    found = set()
    for i, j in itertools.combinations(range(len(values)), 2):
      a, b = values[i], values[j]
      rest = [v for k, v in enumerate(values) if k not in (i, j)]
      combined = {a + b, a * b}
      if a != b:
        combined.add(abs(a - b))
      if a % b == 0:
        combined.add(a // b)
      if b % a == 0:
        combined.add(b // a)
      for c in combined:
        found |= results(tuple(sorted(rest + [c])))
    return frozenset(found)

  return tuple((numbers, target)
               for numbers in itertools.combinations_with_replacement(range(low, high + 1),
                                                                      count)
               for target in sorted(results(numbers)))


class SplitTooLarge(UsageError, ValueError):
  """More distinct problems were asked for than the problem space holds."""


def generate(n: int, seed: int, *, count: int = 4, low: int = 1, high: int = 13,
             simulations: int = 64, exclude: Iterable[Problem] = (),
             name: str = "") -> list[Problem]:
  """n distinct problems (by key), deterministic for `seed`, none equal to one in `exclude`.

  Drawn by the generator (random numbers, the rarest result of random reductions as the
  target); when fresh keys grow rare (500 draws in a row without one) the rest are drawn
  uniformly from the problems of `problem_space` not yet taken, so that any size the
  space can hold is reached in bounded time. A size it cannot hold raises SplitTooLarge,
  naming the largest possible size."""
  rng = random.Random(seed)
  seen = {p.key() for p in exclude}
  space = problem_space(count, low, high)
  available = len(space) - len(seen)
  if n > available:
    split = f" for the {name} split" if name else ""
    taken = f", {len(seen)} of them in other splits" if seen else ""
    raise SplitTooLarge(
        f"{n} distinct {count}-number problems asked{split}, but at most {available} are "
        f"left: {count} numbers in [{low}, {high}] make {len(space)} distinct problems "
        f"(numbers and target){taken}")
  problems = []
  misses = 0
  while len(problems) < n and misses < 500:
    problem = make_problem(rng, count, low, high, simulations)
    if problem.key() in seen:
      misses += 1
    else:
      problems.append(problem)
      seen.add(problem.key())
      misses = 0
  if len(problems) < n:  # the generator's distribution is skewed: finish uniformly
    rest = [key for key in space if key not in seen]
    for numbers, target in rng.sample(rest, n - len(problems)):
      problems.append(Problem(tuple(rng.sample(numbers, len(numbers))), target))
  return problems


def split_problems(seed: int, train_size: int, validation_size: int, test_size: int, *,
                   count: int = 4, **kwargs) -> tuple[list[Problem], list[Problem],
                                                      list[Problem]]:
  """(train, validation, test): distinct problems, disjoint by key. The test split is drawn
  first (seed), then validation (seed + 2), then train (seed + 1), each avoiding the ones
  before it."""
  test = generate(test_size, seed, count=count, name="test", **kwargs)
  validation = generate(validation_size, seed + 2, count=count, exclude=test,
                        name="validation", **kwargs)
  train = generate(train_size, seed + 1, count=count, exclude=test + validation,
                   name="train", **kwargs)
  return train, validation, test


def make_splits(seed: int = 0, train_size: int = 20_000, test_size: int = 820, **kwargs):
  """(train, test) of `split_problems` without a validation split."""
  train, _, test = split_problems(seed, train_size, 0, test_size, **kwargs)
  return train, test


SPLITS = ("train", "validation", "test")


def cached_splits(directory: str, seed: int = 0, train_size: int = 20_000,
                  validation_size: int = 256, test_size: int = 820,
                  count: int = 4) -> tuple[list[Problem], list[Problem], list[Problem]]:
  """`split_problems`, written to directory/{train,validation,test}.jsonl (with the settings
  that made them in splits.json) and read back by later runs with the same settings."""
  settings = {"task": "countdown", "seed": seed, "train_size": train_size,
              "validation_size": validation_size, "test_size": test_size, "numbers": count}
  return _cached(directory, settings, lambda: split_problems(
      seed, train_size, validation_size, test_size, count=count))


def _cached(directory: str, settings: dict, make) -> tuple[list, list, list]:
  """The three splits in directory when splits.json there holds `settings`; else `make()`,
  written there (each file published whole, splits.json last)."""
  record = os.path.join(directory, "splits.json")
  paths = [os.path.join(directory, f"{split}.jsonl") for split in SPLITS]
  if os.path.exists(record) and all(os.path.exists(path) for path in paths):
    with open(record) as f:
      if json.load(f) == settings:
        return tuple(read_jsonl(path) for path in paths)
  splits = make()
  os.makedirs(directory, exist_ok=True)
  for split, path in zip(splits, paths):
    partial = f"{path}.{os.getpid()}.partial"  # atomic publish: a killed run leaves no stub
    write_jsonl(split, partial)
    os.replace(partial, path)
  partial = f"{record}.{os.getpid()}.partial"
  with open(partial, "w") as f:
    json.dump(settings, f)
  os.replace(partial, record)
  return splits


class DataError(UsageError, ValueError):
  """A data file that cannot be read as Countdown problems."""


def _problem(row: dict, where: str) -> Problem:
  """A problem of one data row: `target` and the numbers as `numbers` (ours), `nums`
  (TinyZero's Countdown rows) or `input` (the reference's dataset lines)."""
  try:
    key = next(k for k in ("numbers", "nums", "input") if k in row)
    return Problem(tuple(int(x) for x in row[key]), int(row["target"]))
  except (StopIteration, KeyError, TypeError, ValueError) as e:
    raise DataError(f"{where}: not a Countdown problem (needs 'target' and 'numbers', "
                    f"'nums' or 'input'; got {row!r:.80}: {e!r})") from None


def read_jsonl(path: str) -> list[Problem]:
  """Problems of a JSONL file, one object a line (see `_problem` for the fields)."""
  problems = []
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not JSON ({e})") from None
      problems.append(_problem(row, f"{path}:{line_no}"))
  return problems


def read_problems(path: str) -> list[Problem]:
  """Problems of a data file: JSONL, or parquet (TinyZero's Countdown files; needs the
  `parquet` extra, pyarrow)."""
  if not os.path.exists(path):
    raise DataError(f"no data file {path!r}")
  if not path.endswith(".parquet"):
    return read_jsonl(path)
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise DataError(f"{path}: reading parquet needs pyarrow: pip install "
                    "'jaxdistill[parquet]'") from None
  rows = pq.read_table(path).to_pylist()
  return [_problem(row, f"{path} row {i}") for i, row in enumerate(rows)]


def file_splits(directory: str, path: str, seed: int, train_size: int, validation_size: int,
                test_size: int) -> tuple[list[Problem], list[Problem], list[Problem]]:
  """(train, validation, test) from a data file: its problems without repeats (by key, the
  first occurrence kept), shuffled by `seed`, then test, validation and train carved in that
  order; written to directory like `cached_splits`."""
  stat = os.stat(path)
  settings = {"task": "countdown", "data_path": os.path.abspath(path), "bytes": stat.st_size,
              "modified": stat.st_mtime, "seed": seed, "train_size": train_size,
              "validation_size": validation_size, "test_size": test_size}

  def make():
    distinct, seen = [], set()
    for problem in read_problems(path):
      if problem.key() not in seen:
        seen.add(problem.key())
        distinct.append(problem)
    random.Random(seed).shuffle(distinct)
    needed = train_size + validation_size + test_size
    if needed > len(distinct):
      raise SplitTooLarge(
          f"{path} holds {len(distinct)} distinct problems, fewer than train + validation + "
          f"test = {needed}: at most task.train_size="
          f"{max(len(distinct) - validation_size - test_size, 0)} with these sizes")
    test = distinct[:test_size]
    validation = distinct[test_size:test_size + validation_size]
    return distinct[test_size + validation_size:needed], validation, test

  return _cached(directory, settings, make)


def write_jsonl(problems: Iterable[Problem], path: str) -> None:
  """One JSON object a line."""
  with open(path, "w") as f:
    for p in problems:
      f.write(p.to_json() + "\n")


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
           require_all: bool = False, integer_intermediates: bool = False) -> float:
  """Sparse: 1.0 on the target else 0.0. Dense: 1 - w*min(|t-p|/t, 1); invalid -> -1.0."""
  result = grade(completion, numbers, target, require_all=require_all,
                 integer_intermediates=integer_intermediates)
  if not dense:
    return 1.0 if result.correct else 0.0
  if not result.valid:
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
