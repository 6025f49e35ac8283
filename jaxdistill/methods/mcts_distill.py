"""mcts_distill: pUCT search over reasoning steps per prompt; the most-visited path (or the
tree's trajectories, or its visit distributions) goes to the learner."""

from __future__ import annotations

from jaxdistill.methods.base import Method
from jaxdistill.rl import rollouts
from jaxdistill.rl.rollouts import SEARCH_TARGETS


def _completes(search) -> bool:
  """Whether the rollout samples completions after the search."""
  return SEARCH_TARGETS[search.targets].completes(search)


class MctsDistill(Method):
  name = "mcts_distill"
  searches = True

  def check(self, config) -> list[str]:
    return SEARCH_TARGETS[config.search.targets].check(config.search)

  def sampling_temperature(self, config):
    return "search.temperature", config.search.temperature

  def learner_temperature(self, config):
    # rows scored against the current policy are scored at the prior's temperature, 1
    if SEARCH_TARGETS[config.search.targets].scores_current_policy:
      return 1.0
    return config.search.temperature

  def rollout(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
              reward_fn, dense_reward_fn, extras=None):
    del dense_reward_fn, extras
    traj, _ = rollouts.mcts_distill(graphdef, params, prompt_tokens, prompt_lengths, problems,
                                    keys, spec.rollout, spec.search, reward_fn)
    return traj

  def forward_tokens(self, prompts, prompt_width, spec):
    search, lm = spec.search, spec.search.lm
    decoded = lm.max_rollout_tokens if lm.rollout_to_end else lm.max_step_tokens
    expansions = prompts * search.num_iterations * search.num_agents
    if lm.reuse_kv:  # the root prefills the prompt, an expansion only the step it appends
      searched = (prompts * (prompt_width + lm.num_children * decoded)
                  + expansions * (lm.max_step_tokens + lm.num_children * decoded))
    else:  # every node prefills its whole path buffer
      searched = (prompts + expansions) * (lm.max_path_tokens + lm.num_children * decoded)
    completions = (prompts * (lm.max_path_tokens + spec.rollout.max_completion_tokens)
                   if _completes(search) else 0)
    return searched + completions

  def kv_slots(self, prompts, prompt_width, spec):
    search, lm = spec.search, spec.search.lm
    decoded = lm.max_rollout_tokens if lm.rollout_to_end else lm.max_step_tokens
    # one expansion call evaluates every agent's leaf (the root call: one node per tree)
    expansion = prompts * search.num_agents * (lm.max_path_tokens + lm.num_children * decoded)
    if lm.reuse_kv:  # + the path's gathered KV has room for the step, + the tree's KV pool
      nodes = 1 + search.num_iterations * search.num_agents
      expansion += prompts * (search.num_agents * lm.max_step_tokens
                              + prompt_width + nodes * lm.max_step_tokens)
    completion = (prompts * (lm.max_path_tokens + spec.rollout.max_completion_tokens)
                  if _completes(search) else 0)
    return max(expansion, completion)

  def search_tree(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
                  reward_fn, extras=None):
    del extras
    return rollouts.mcts_distill(graphdef, params, prompt_tokens, prompt_lengths, problems,
                                 keys, spec.rollout, spec.search, reward_fn)[1].tree

  def learner_shape(self, prompts, prompt_width, spec):
    return SEARCH_TARGETS[spec.search.targets].learner_shape(prompts, spec.search, spec.rollout)

  def brings_advantages(self, spec):
    return SEARCH_TARGETS[spec.search.targets].brings_advantages

  def scores_current_policy(self, spec):
    return SEARCH_TARGETS[spec.search.targets].scores_current_policy
