"""Countdown problems as data: the generator (random numbers, the rarest result of random
reductions as the target), the problem space it can reach, splits that are distinct and
disjoint by content, and the data files runs write and read (ours, TinyZero's, the
reference's). The task itself (prompts, verifier, solver) is `jaxdistill.tasks.countdown`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import os
import random
from typing import Iterable, Sequence

from jaxdistill.errors import UsageError
from jaxdistill.files import publish, write_json

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
  for split, path in zip(splits, paths):
    write_jsonl(split, path)
  write_json(record, settings)
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
  """One JSON object a line, published whole."""
  publish(path, lambda f: f.writelines(p.to_json() + "\n" for p in problems))
