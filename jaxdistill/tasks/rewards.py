"""Task rewards as the search and the rollouts call them: (generated token ids, problem index)
-> float. The one place where a task meets a tokenizer; the search only receives the
reward (through `lm_expand.task_rewards`) and knows nothing of the task."""

from __future__ import annotations

import functools

import numpy as np
from absl import logging

from jaxdistill import tokenization


class TaskReward:
  """Reward of generated tokens for `problems[i]`: the tokens are decoded, then graded as text
  by the task (sparse: 1 if solved, else 0; dense: the task's graded score).

  `device`, when the task has a device form of its reward that grades these problems
  exactly: the same reward as a jittable function (token rows [M, T] with -1 outside the
  completion, problem indices [M]) -> [M] float32, which `lm_expand.task_rewards` uses instead
  of a host callback. `tables`: the device form's problem arrays as given (arrays or a
  program's traced arguments), instead of `problems`' own (then `problems` may be empty)."""

  def __init__(self, task, tokenizer, problems, dense: bool = False, *, device: bool = True,
               tables=None):
    self.task, self.tokenizer, self.problems, self.dense = task, tokenizer, problems, dense
    self.device = None
    form = task.device_reward(tokenizer, dense) if device else None
    if form is None:
      return
    if tables is None:
      try:
        tables = form.tables(problems)
      except ValueError as e:  # too large for the device form: the host grades them
        logging.warning("%s; rewards are computed on the host", e)
        return
    self.device = functools.partial(form, tables)

  def __call__(self, tokens: np.ndarray, problem: int) -> float:
    return self.task.reward(tokenization.decode(self.tokenizer, tokens), self.problems[problem],
                            self.dense)


def task_reward_fn(task, tokenizer, problems, dense: bool = False, *, device: bool = True):
  """The `TaskReward` of problems (device=False: always graded on the host)."""
  return TaskReward(task, tokenizer, problems, dense, device=device)
