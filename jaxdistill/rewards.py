"""Task rewards as the search and the rollouts call them: (generated token ids, problem index)
-> float. The one place where a task meets a tokenizer; the search only receives the
function (through `lm_expand.task_rewards`) and knows nothing of the task."""

from __future__ import annotations

import numpy as np

from jaxdistill import tokenization


def task_reward_fn(task, tokenizer, problems, dense: bool = False):
  """Reward of generated tokens for `problems[i]`: the tokens are decoded, then graded as
  text by the task (sparse: 1 if solved, else 0; dense: the task's graded score)."""

  def reward_fn(tokens: np.ndarray, problem: int) -> float:
    return task.reward(tokenization.decode(tokenizer, tokens), problems[problem], dense)

  return reward_fn
