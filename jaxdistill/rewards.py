"""Task rewards as the search and the rollouts call them: (generated token ids, problem index)
-> float. The one place where a task meets a tokenizer; the search only receives the
function (through `lm_expand.task_rewards`) and knows nothing of Countdown."""

from __future__ import annotations

import numpy as np

from jaxdistill import tokenization
from jaxdistill.tasks import countdown


def countdown_reward_fn(tokenizer, problems, dense: bool = False):
  """Reward of generated tokens for Countdown problem `problems[i]` (the tokens are decoded,
  then graded as text; sparse: 1 if correct, dense: see `countdown.reward`)."""

  def reward_fn(tokens: np.ndarray, problem: int) -> float:
    p = problems[problem]
    return countdown.reward(tokenization.decode(tokenizer, tokens), p.numbers, p.target,
                            dense=dense)

  return reward_fn
