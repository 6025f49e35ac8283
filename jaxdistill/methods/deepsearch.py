"""deepsearch: DeepSearch's tree search inside RL (`search/deepsearch.py`): each prompt's tree
harvests `deepsearch.trajectories` terminal paths, each a learner row whose tokens carry
their node's backed-up value minus the tree's mean outcome (Tree-GRPO advantages).

DeepSearch's learner (PPO with clip-higher 0.2 / 0.28, dual clip 10, token-mean, no KL) is
not forced here: those are learner settings any method may use; `experiments.compare`'s
`deepsearch` entry sets them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.methods.base import Method
from jaxdistill.rl.rollouts import Trajectories
from jaxdistill.search import deepsearch


class DeepSearch(Method):
  name = "deepsearch"
  searches = True

  def sampling_temperature(self, config):
    return "search.temperature", config.search.temperature

  def options(self, config) -> deepsearch.DeepSearchSettings:
    d = config.deepsearch
    return deepsearch.DeepSearchSettings(
        trajectories=d.trajectories, expansions=d.expansions, max_depth=d.max_depth,
        frontier_q=d.frontier_q, frontier_entropy=d.frontier_entropy,
        frontier_depth=d.frontier_depth, backup_floor=d.backup_floor,
        incomplete_reward=d.incomplete_reward)

  def rollout(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
              reward_fn, dense_reward_fn):
    del dense_reward_fn
    model = nnx.merge(graphdef, params)
    settings, lm = spec.options, spec.search.lm
    tree = deepsearch.search(model, lm, settings, prompt_tokens, prompt_lengths, problems,
                             keys, reward_fn)
    return tree_trajectories(tree, settings, problems)

  def forward_tokens(self, prompts, prompt_width, spec):
    lm = spec.search.lm
    return prompts * spec.options.expansions * (lm.max_path_tokens
                                                + lm.num_children * lm.max_step_tokens)

  def learner_shape(self, prompts, prompt_width, spec):
    return prompts * spec.options.trajectories, spec.search.lm.max_path_tokens

  def brings_advantages(self, spec):
    return True


def tree_trajectories(tree: deepsearch.DeepTree, settings: deepsearch.DeepSearchSettings,
                      problems) -> Trajectories:
  """The harvested paths of B trees as learner rows [B * n] (unused rows invalid, with no
  generated token), advantages target-aligned."""
  leaf, valid, advantages = jax.vmap(deepsearch.row_advantages, in_axes=(0, None))(tree,
                                                                                    settings)
  rows = jnp.arange(leaf.shape[0])[:, None]
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  prompt_length = tree.path_length[:, deepsearch.ROOT]
  length = jnp.where(valid, tree.path_length[rows, leaf], prompt_length[:, None])
  n = settings.trajectories
  return Trajectories(
      tokens=flat(tree.path_tokens[rows, leaf]),
      prompt_length=jnp.repeat(prompt_length, n), length=flat(length),
      reward=flat(jnp.where(valid, tree.task_reward[rows, leaf], 0.0)),
      group=jnp.repeat(problems.astype(jnp.int32), n),
      generated_tokens=tree.generated.sum(),
      behaviour_logprobs=flat(tree.path_logprobs[rows, leaf])[:, 1:],
      advantages=flat(advantages)[:, 1:], valid=flat(valid))
