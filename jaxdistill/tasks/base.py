"""What the engine needs from a task: problems, their prompts, a verifier's reward and the
text that ends a reasoning step (the search's node boundary). Training, evaluation, the warm
start and the search see a task only through this interface and index problems by position,
so a new task is one module under `jaxdistill/tasks/` plus an entry in `TASKS`."""

from __future__ import annotations

import abc
from typing import Any, Sequence

from jaxdistill.tasks.format import STEP_END


# deep nesting, 1,000-digit literals, long operator chains, unicode, repeated markup
STRESS_BODIES = (
    "(" * 999 + "3" + ")" * 999, "(" * 1990, "9" * 1000 + "*" + "9" * 980, "3" + "+3" * 990,
    "3/" * 660 + "5", "7" + "-(5" * 400 + ")" * 400,
    "".join(chr(0x1F600 + i % 80) for i in range(1980)), "\u00b2" * 1980, "3 " * 990)


class Task(abc.ABC):
  """A task. Problems are opaque to the engine: any object with `key()` (its identity, for
  disjoint splits) that the task's own methods understand."""

  name: str = "task"
  # where a reasoning step ends: the search cuts candidate steps after it, however the
  # tokenizer splits it (jaxdistill.stopping)
  step_delimiter: str = STEP_END

  @classmethod
  def from_config(cls, section) -> "Task":
    """The task of a config's `task` section (a task reads its own fields of it)."""
    del section
    return cls()

  @abc.abstractmethod
  def splits(self, directory: str, seed: int, train_size: int, validation_size: int,
             test_size: int) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
    """(train, validation, test) problems, deterministic for `seed`, disjoint by key and
    without repeats, written to `directory` (train.jsonl, validation.jsonl, test.jsonl)."""

  @abc.abstractmethod
  def prompt(self, problem, tokenizer, style: str) -> str:
    """The prompt text of a problem; style 'compact' (character tokenizer) or 'chat' (an
    instruct tokenizer's chat template)."""

  @abc.abstractmethod
  def reward(self, completion: str, problem, dense: bool) -> float:
    """The reward of generated text (only the completion, never the prompt): 1.0 solved;
    sparse: else 0; dense: a graded score in [-1, 1)."""

  def device_reward(self, tokenizer, dense: bool):
    """The same reward computed inside the compiled program, or None (then the program calls
    `reward` on the host). An object with `tables(problems)` (host arrays; ValueError when
    the device form cannot grade them exactly) and `__call__(tables, tokens, problems)`:
    token rows [M, T] (-1 outside the completion) and problem indices [M] -> rewards [M]
    float32, equal to `reward` of the decoded completion. Countdown has one
    (`countdown_device`); it keeps the program free of host callbacks, so the persistent
    compilation cache can keep it."""
    del tokenizer, dense
    return None

  def reward_cases(self, problems, count: int, seed: int = 0) -> list[tuple[str, int]]:
    """`count` seeded (completion, problem index) pairs that exercise the verifier, for
    checking a device reward against it (`bench.device_reward`)."""
    raise NotImplementedError(f"task {self.name!r} has no reward cases")

  def capacity(self) -> int | None:
    """How many distinct problems the task can make (None: not known before reading its
    data); the three splits together hold at most that many."""
    return None

  def demonstration(self, problem) -> str | None:
    """A solution in the step format, for the supervised warm start (None: unsolvable)."""
    raise NotImplementedError(f"task {self.name!r} has no demonstrations for a warm start")

  def stress_completions(self, problem) -> list[str]:
    """Completions of <= 2,000 characters built to make the verifier slow (the verifier
    benchmark's adversarial set); a task whose answers have a format of its own wraps them
    in it."""
    del problem
    return [body[:2000] for body in STRESS_BODIES]

  def describe(self, problem) -> dict:
    """The problem as JSON-able fields (shown with answers)."""
    return {"problem": str(problem)}
