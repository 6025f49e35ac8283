"""mcts_distill: pUCT search over reasoning steps per prompt; the most-visited path (or the
tree's trajectories, or its visit distributions) goes to the learner."""

from __future__ import annotations

from jaxdistill.methods.base import Method
from jaxdistill.rl import rollouts
from jaxdistill.search import lm_expand


def _completes(search) -> bool:
  """Whether the rollout samples completions after the search (path targets that complete
  an unfinished path)."""
  return search.targets == "path" and search.complete_path


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
