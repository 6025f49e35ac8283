"""mcts_distill: pUCT search over reasoning steps per prompt; the most-visited path (or the
tree's trajectories, or its visit distributions) goes to the learner."""

from __future__ import annotations

from jaxdistill.methods.base import Method
from jaxdistill.rl import rollouts
from jaxdistill.search import lm_expand


class MctsDistill(Method):
  name = "mcts_distill"
  searches = True

  def check(self, config) -> list[str]:
    s = config.search
    if s.targets == "visits" and s.tree_rows % s.num_children:
      return [f"config field search.tree_rows={s.tree_rows}: visits targets take "
              f"search.num_children={s.num_children} rows per node, so it must be a "
              "multiple of it"]
    return []

  def sampling_temperature(self, config):
    return "search.temperature", config.search.temperature

  def learner_temperature(self, config):
    # visit targets are scored at the prior's temperature, 1, against the current policy
    return 1.0 if config.search.targets == "visits" else config.search.temperature

  def rollout(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
              reward_fn, dense_reward_fn, extras=None):
    del dense_reward_fn, extras
    traj, _ = rollouts.mcts_distill(graphdef, params, prompt_tokens, prompt_lengths, problems,
                                    keys, spec.rollout, spec.search, reward_fn)
    return traj

  def forward_tokens(self, prompts, prompt_width, spec):
    search, lm = spec.search, spec.search.lm
    decoded = lm.max_rollout_tokens if lm.rollout_to_end else lm.max_step_tokens
    per_expansion = lm.max_path_tokens + lm.num_children * decoded
    expansions = prompts * (1 + search.num_iterations * search.num_agents)
    completions = (0 if search.targets in ("tree", "visits")
                   else prompts * (lm.max_path_tokens + spec.rollout.max_completion_tokens))
    return expansions * per_expansion + completions

  def kv_slots(self, prompts, prompt_width, spec):
    search, lm = spec.search, spec.search.lm
    decoded = lm.max_rollout_tokens if lm.rollout_to_end else lm.max_step_tokens
    # one expansion call evaluates every agent's leaf (the root call: one node per tree)
    expansion = prompts * search.num_agents * (lm.max_path_tokens + lm.num_children * decoded)
    completion = (0 if search.targets in ("tree", "visits")
                  else prompts * (lm.max_path_tokens + spec.rollout.max_completion_tokens))
    return max(expansion, completion)

  def search_tree(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
                  reward_fn, extras=None):
    del extras
    return rollouts.mcts_distill(graphdef, params, prompt_tokens, prompt_lengths, problems,
                                 keys, spec.rollout, spec.search, reward_fn)[1].tree

  def learner_shape(self, prompts, prompt_width, spec):
    search, lm = spec.search, spec.search.lm
    if search.targets == "visits":
      return prompts * (search.tree_rows // lm.num_children) * lm.num_children, (
          lm.max_path_tokens)
    if search.targets == "tree":
      return prompts * search.tree_rows, lm.max_path_tokens + lm_expand.rollout_width(lm)
    return prompts, lm.max_path_tokens + spec.rollout.max_completion_tokens

  def brings_advantages(self, spec):
    return spec.search.targets in ("tree", "visits")

  def scores_current_policy(self, spec):
    return spec.search.targets == "visits"
