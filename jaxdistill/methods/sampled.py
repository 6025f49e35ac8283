"""The methods that sample complete answers per prompt: cispo (all G samples to the learner,
group-relative advantages) and best_of_n (the best of N by dense reward)."""

from __future__ import annotations

from jaxdistill.methods.base import Method
from jaxdistill.rl import rollouts


class Cispo(Method):
  name = "cispo"

  def check(self, config) -> list[str]:
    if config.rollout.group_size < 2:
      return [f"config field rollout.group_size={config.rollout.group_size}: cispo's "
              "group-relative advantages need at least 2 samples per prompt"]
    return []

  def advantage(self, config) -> str:
    # group-relative: standardised within the prompt's group (GRPO), or mean-only
    # (learner.advantage_std=False: Dr. GRPO, DeepSearch)
    return "group" if config.learner.advantage_std else "group_mean"

  def rollout(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
              reward_fn, dense_reward_fn, extras=None):
    del dense_reward_fn, extras
    return rollouts.cispo(graphdef, params, prompt_tokens, prompt_lengths, problems, keys,
                          spec.rollout, reward_fn)

  def forward_tokens(self, prompts, prompt_width, spec):
    r = spec.rollout
    return prompts * (prompt_width + r.group_size * r.max_completion_tokens)

  def kv_slots(self, prompts, prompt_width, spec):
    return self.forward_tokens(prompts, prompt_width, spec)  # one call: the group's samples

  def learner_shape(self, prompts, prompt_width, spec):
    return prompts * spec.rollout.group_size, prompt_width + spec.rollout.max_completion_tokens


class BestOfN(Method):
  name = "best_of_n"

  def rollout(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
              reward_fn, dense_reward_fn, extras=None):
    del extras
    return rollouts.best_of_n(graphdef, params, prompt_tokens, prompt_lengths, problems, keys,
                              spec.rollout, reward_fn, dense_reward_fn)

  def forward_tokens(self, prompts, prompt_width, spec):
    r = spec.rollout
    return prompts * (prompt_width + r.best_of * r.max_completion_tokens)

  def kv_slots(self, prompts, prompt_width, spec):
    return self.forward_tokens(prompts, prompt_width, spec)  # one call: the N samples

  def learner_shape(self, prompts, prompt_width, spec):
    return prompts, prompt_width + spec.rollout.max_completion_tokens
