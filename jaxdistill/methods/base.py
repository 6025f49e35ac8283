"""What a training method is to the rest of the engine.

A method turns one batch of prompts into learner rows (`rollout`, run per device inside the
jitted iteration), says what that costs (`forward_tokens`: positions the LM runs on) and
what the learner receives (`learner_shape`), which settings it reads (`check`,
`sampling_temperature`, `learner_temperature`, `advantage`) and its own static settings
(`options`). The runtime (train/), settings.py, validation.py, the memory planner and the
comparison ask the method and never test its name, so a new method is one module registered
in `jaxdistill.methods.METHODS`.

Three hooks are a cost model that training never calls: `kv_slots` and `search_tree` (the
memory planner, bench/memory.py) and `probe_iterations` (the comparison's token probe,
experiments/). They stay here because only the method knows its shapes and its schedule,
and the planner must size a run from abstract shapes before any weights exist; a method
that leaves them out still trains (they raise or return None), it cannot be planned or
compared.

`spec` below is the iteration's `settings.IterationSettings` (its rollout, search, learner,
advantage and the method's `options`); this layer does not import it (settings imports the
methods).
"""

from __future__ import annotations

from jaxdistill.rl.rollouts import Trajectories


class Method:
  """One training method (a stateless singleton)."""

  name: str = ""
  # the iteration builds the step search's settings (the task's step delimiter is needed)
  searches: bool = False

  def check(self, config) -> list[str]:
    """Problems of this method with the config (cross-field rules; empty: usable)."""
    del config
    return []

  def sampling_temperature(self, config) -> tuple[str, float]:
    """(config field, value) of the temperature the training samples are drawn at."""
    return "rollout.temperature", config.rollout.temperature

  def learner_temperature(self, config) -> float:
    """The temperature the learner scores tokens at: the one they were sampled at."""
    return self.sampling_temperature(config)[1]

  def advantage(self, config) -> str:
    """The advantage estimator assemble_batch applies to rows that bring none."""
    return config.learner.advantage

  def options(self, config):
    """The method's own static settings (hashable), or None."""
    del config
    return None

  def rollout(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
              reward_fn, dense_reward_fn, extras=None) -> Trajectories:
    """Learner rows for a batch of prompts (per device, inside jit); extras: the per-prompt
    arrays its schedule feeds (None without one)."""
    raise NotImplementedError

  def forward_tokens(self, prompts: int, prompt_width: int, spec) -> int:
    """Positions the LM processes for one batch of prompts (static shapes, padding
    included; a prompt shared by several samples is prefilled once)."""
    raise NotImplementedError

  def kv_slots(self, prompts: int, prompt_width: int, spec) -> int:
    """KV-cache slots (each a position's keys and values in every layer) of the largest
    single LM call of one rollout, with any KV kept across calls beside it (a search's KV
    pool): the cache it holds at once (the memory planner)."""
    raise NotImplementedError

  def search_tree(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
                  reward_fn, extras=None):
    """The tree its search keeps for a batch of prompts (per device, traced for its shapes
    by the memory planner), or None: a method that does not search."""
    del graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec, reward_fn, extras
    return None

  def learner_shape(self, prompts: int, prompt_width: int, spec) -> tuple[int, int]:
    """(trajectories, tokens per trajectory) that one batch of prompts gives the learner."""
    raise NotImplementedError

  def brings_advantages(self, spec) -> bool:
    """Its rows carry their own per-token advantages (no value-head forward to assemble)."""
    del spec
    return False

  def scores_current_policy(self, spec) -> bool:
    """Its rows carry no behaviour log-probs (the current policy's are computed)."""
    del spec
    return False

  def probe_iterations(self, config) -> int:
    """Iterations whose mean generated tokens stand for the method's (a comparison's probe
    of its cost per iteration)."""
    del config
    return 2

  def schedule(self, config, spec, task, tokenizer, train_problems):
    """The method's state on the host between iterations, or None (prompts in data order).

    A schedule has `before(step, policy) -> (problem ids, extras, metrics)`: the
    iteration's problems, per-prompt arrays fed to `rollout` as `extras` (split over
    devices like the prompts) and metrics to log (their `filter_tokens` count as generated
    tokens); `after(ids, rows)`: the iteration's learner rows on the host (tokens,
    prompt_length, length, reward, valid, replayed); `arrays()` / `load(arrays)`: its state
    as fixed-shape numpy arrays, saved in every checkpoint."""
    del config, spec, task, tokenizer, train_problems
    return None
