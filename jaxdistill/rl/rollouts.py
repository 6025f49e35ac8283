"""Trajectory producers over the same sampler: mcts_distill, cispo (group sampling), best_of_n.

Each returns `Trajectories` (prompt + completion tokens, right-padded, with their reward)
plus what it cost: tokens generated (sampled) and LM token-forwards (every position the
model ran on, padding of the static shapes included), so methods can be compared at equal
compute. All functions run inside jit (and shard_map); rewards come from the task's device
reward inside the program, or from Python through `jax.pure_callback` for a task without one
(`lm_expand.task_rewards`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill import sampling
from jaxdistill.search import lm_expand, mcts, targets


@chex.dataclass(frozen=True)
class Trajectories:
  """Completed trajectories for the learner."""

  tokens: jax.Array  # [M, S] int32 prompt + completion, pad after `length`
  prompt_length: jax.Array  # [M] int32
  length: jax.Array  # [M] int32 prompt + completion
  reward: jax.Array  # [M] float32 task reward (sparse or dense, per config)
  group: jax.Array  # [M] int32 index of the prompt the row answers
  generated_tokens: jax.Array  # [] int32 tokens sampled to produce these rows
  # [M, S - 1] float32, target-aligned (entry t: token t + 1): the log-prob each generated
  # token was sampled with, under the sampler's temperature and top-p (the behaviour policy
  # of the learner's ratio); None: the loss is defined against the current policy (visit
  # targets), whose log-probs the iteration computes
  behaviour_logprobs: jax.Array | None
  # given per-token advantages [M, S - 1] (target-aligned; tree targets), else computed by
  # the iteration from the reward
  advantages: jax.Array | None = None
  valid: jax.Array | None = None  # [M] bool: rows that hold a trajectory (None: all)
  # [M] bool: rows replayed from a buffer of verified solutions (generated earlier, not now)
  replayed: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """Static settings shared by the producers (built by `settings.rollout`)."""

  max_completion_tokens: int
  temperature: float
  top_p: float
  group_size: int  # cispo samples per prompt
  best_of: int  # best_of_n samples per prompt
  eos_id: int = 1
  pad_id: int = 0


def _concat(prompt_tokens, prompt_lengths, out: sampling.SampleOutput, pad_id: int):
  """Right-padded prompt + completion rows [M, T + N], their lengths, and the completion's
  behaviour log-probs, target-aligned [M, T + N - 1]."""
  tokens, lengths = sampling.concat_completion(prompt_tokens, prompt_lengths, out.tokens,
                                               out.lengths, pad_id)
  behaviour = sampling.completion_values(prompt_lengths, out.sample_logprobs, out.lengths,
                                         tokens.shape[1])
  return tokens, lengths, behaviour[:, 1:]


def sample_completions(model, prompt_tokens, prompt_lengths, row_keys, config: RolloutSettings,
                       temperature):
  """One completion per row (until EOS or max_completion_tokens)."""
  return sampling.sample_continuations(
      model, prompt_tokens, prompt_lengths, row_keys, max_new_tokens=config.max_completion_tokens,
      temperature=temperature, top_p=config.top_p, stop_ids=(config.eos_id,),
      pad_id=config.pad_id)


def _group_samples(model, prompt_tokens, prompt_lengths, problems, keys, config, samples,
                   temperature, reward_fn):
  """`samples` completions of every prompt, with rewards: rows [B * samples]. Each prompt is
  prefilled once; its samples share that KV cache."""
  repeat = lambda x: jnp.repeat(x, samples, axis=0)
  row_keys = sampling.split_per_row(keys, samples)
  out = sampling.sample_continuations(
      model, prompt_tokens, prompt_lengths, row_keys, samples=samples,
      max_new_tokens=config.max_completion_tokens, temperature=temperature, top_p=config.top_p,
      stop_ids=(config.eos_id,), pad_id=config.pad_id)
  tokens, lengths = repeat(prompt_tokens), repeat(prompt_lengths)
  full, total, behaviour = _concat(tokens, lengths, out, config.pad_id)
  groups = repeat(problems)
  reward = lm_expand.task_rewards(full, lengths, total, groups, reward_fn)
  return Trajectories(tokens=full, prompt_length=lengths, length=total, reward=reward,
                      group=groups, generated_tokens=out.lengths.sum(),
                      behaviour_logprobs=behaviour)


def cispo(graphdef, params, prompt_tokens, prompt_lengths, problems, keys,
          config: RolloutSettings, reward_fn):
  """G samples per prompt at the configured temperature; all of them go to the learner."""
  model = nnx.merge(graphdef, params)
  return _group_samples(model, prompt_tokens, prompt_lengths, problems, keys, config,
                        config.group_size, config.temperature, reward_fn)


def best_of_n(graphdef, params, prompt_tokens, prompt_lengths, problems, keys,
              config: RolloutSettings, reward_fn, dense_reward_fn):
  """N samples per prompt; the best by dense reward becomes the prompt's trajectory."""
  model = nnx.merge(graphdef, params)
  n = config.best_of
  all_rows = _group_samples(model, prompt_tokens, prompt_lengths, problems, keys, config, n,
                            config.temperature, dense_reward_fn)
  batch = prompt_tokens.shape[0]
  best = jnp.argmax(all_rows.reward.reshape(batch, n), axis=-1) + jnp.arange(batch) * n
  pick = lambda x: x[best]
  chosen = jax.tree.map(pick, dict(tokens=all_rows.tokens, prompt_length=all_rows.prompt_length,
                                   length=all_rows.length, group=all_rows.group,
                                   behaviour_logprobs=all_rows.behaviour_logprobs))
  reward = lm_expand.task_rewards(chosen["tokens"], chosen["prompt_length"],
                                  chosen["length"], chosen["group"], reward_fn)
  return Trajectories(reward=reward, generated_tokens=all_rows.generated_tokens, **chosen)


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """Static search settings for mcts_distill (built by `settings.search`)."""

  lm: lm_expand.LMSearchSettings
  num_iterations: int
  num_agents: int
  c_puct: float
  first_play_value: float
  virtual_loss: str
  root_selection: str
  # path: the most-visited path | tree: the tree's trajectories | visits: AlphaZero's visit
  # distributions over the candidate steps of the path's nodes
  targets: str
  # tree / visits targets: learner rows per prompt (static; unused rows masked); visits:
  # tree_rows // K nodes of the path, K candidate rows each
  tree_rows: int
  step_advantage: bool  # tree targets: add step-level advantages to the global ones
  # path targets: complete a path that stopped before EOS by sampling (else it is learnt as
  # searched, rewarded unfinished_reward)
  complete_path: bool = True
  unfinished_reward: float = -1.0


def mcts_distill(graphdef, params, prompt_tokens, prompt_lengths, problems, keys,
                 config: RolloutSettings, search: SearchSettings, reward_fn):
  """Search per prompt, then the learner rows of `search.targets` (`SEARCH_TARGETS`):
  (Trajectories, mcts.SearchOutput without the KV pool)."""
  model = nnx.merge(graphdef, params)
  lm = search.lm
  root_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  search_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  completion_keys = jax.vmap(lambda k: jax.random.fold_in(k, 3))(keys)
  root = lm_expand.root_output(model, lm, prompt_tokens, prompt_lengths, problems, root_keys,
                               reward_fn)
  expand_fn = lm_expand.make_expand_fn(graphdef, params, lm, reward_fn)
  out = mcts.search(root, expand_fn, search_keys, num_iterations=search.num_iterations,
                    num_agents=search.num_agents, c_puct=search.c_puct,
                    first_play_value=search.first_play_value,
                    virtual_loss=search.virtual_loss, root_selection=search.root_selection)
  # the KV pool is the search's working memory: the tree leaves without it
  out = out.replace(tree=out.tree.replace(embeddings=lm_expand.without_kv(out.tree.embeddings)))
  emb = out.tree.embeddings
  per_node = emb.rollout_lengths if lm.rollout_to_end else emb.candidate_lengths
  searched = (per_node.sum(-1) * (out.tree.expanded & ~out.tree.terminal)).sum()
  traj = SEARCH_TARGETS[search.targets].trajectories(
      model, out, searched, prompt_lengths, problems, completion_keys, config, search,
      reward_fn)
  return traj, out


def _path_trajectories(model, out, searched, prompt_lengths, problems, keys,
                       config: RolloutSettings, search: SearchSettings, reward_fn):
  """The most-visited path, completed by sampling if it stopped short (complete_path), else
  as searched, an unfinished one scored search.unfinished_reward."""
  lm, emb = search.lm, out.tree.embeddings
  batch = prompt_lengths.shape[0]
  rows = jnp.arange(batch)
  last = jnp.where(out.path_length > 0,
                   out.path_nodes[rows, jnp.maximum(out.path_length - 1, 0)], 0)
  path, path_length = emb.path_tokens[rows, last], emb.path_length[rows, last]
  finished = out.tree.terminal[rows, last]
  if search.complete_path:  # paths that stopped before EOS go on by ordinary sampling
    completion = sample_completions(model, path, path_length, keys, config, lm.temperature)
    completion = completion.replace(lengths=jnp.where(finished, 0, completion.lengths))
  else:  # as searched (the same shapes, nothing appended)
    width = config.max_completion_tokens
    completion = sampling.SampleOutput(
        tokens=jnp.full((batch, width), lm.pad_id, jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32), logprobs=jnp.zeros((batch, width)),
        sample_logprobs=jnp.zeros((batch, width)), values=None, finished=finished,
        prompt_value=jnp.zeros((batch,)), string_end=jnp.zeros((batch,), jnp.int32))
  tokens, length, behaviour = _concat(path, path_length, completion, lm.pad_id)
  path_behaviour = jnp.pad(emb.path_logprobs[rows, last],
                           ((0, 0), (0, tokens.shape[1] - path.shape[1])))
  behaviour = behaviour + path_behaviour[:, 1:]  # the path's steps, then the completion
  prompt_length = prompt_lengths.astype(jnp.int32)
  reward = lm_expand.task_rewards(tokens, prompt_length, length, problems, reward_fn)
  if not search.complete_path:  # a path that never reached EOS has no answer to grade
    ended = tokens[rows, jnp.maximum(length - 1, 0)] == lm.eos_id
    reward = jnp.where(ended, reward, search.unfinished_reward)
  # sampled: the K candidates (or rollouts) of every evaluated non-terminal node, and the
  # completions
  return Trajectories(tokens=tokens, prompt_length=prompt_length, length=length, reward=reward,
                      group=problems.astype(jnp.int32), behaviour_logprobs=behaviour,
                      generated_tokens=searched + completion.lengths.sum())


def _from_tree_rows(rows: targets.TreeRows, advantages, searched, problems) -> Trajectories:
  behaviour = None if rows.behaviour_logprobs is None else rows.behaviour_logprobs[:, 1:]
  return Trajectories(tokens=rows.tokens, prompt_length=rows.prompt_length,
                      length=rows.length, reward=rows.reward, behaviour_logprobs=behaviour,
                      group=problems.astype(jnp.int32)[rows.tree], generated_tokens=searched,
                      advantages=advantages, valid=rows.valid)


def _tree_trajectories(model, out, searched, prompt_lengths, problems, keys, config, search,
                       reward_fn):
  """Every rollout (or terminal path) of the tree, with tree advantages."""
  del model, prompt_lengths, keys, config, reward_fn
  lm = search.lm
  rows = targets.tree_rows(out.tree, search.tree_rows, lm.rollout_to_end, lm.pad_id)
  advantages = targets.token_advantages(out.tree, rows, search.tree_rows,
                                        search.step_advantage)
  return _from_tree_rows(rows, advantages, searched, problems)


def _visit_trajectories(model, out, searched, prompt_lengths, problems, keys, config, search,
                        reward_fn):
  """The path's nodes' candidate steps against their visit distribution (AlphaZero)."""
  del model, prompt_lengths, keys, config, reward_fn
  nodes = search.tree_rows // search.lm.num_children
  rows, advantages = targets.visit_rows(out, search.lm, nodes)
  return _from_tree_rows(rows, advantages, searched, problems)


def _visit_check(s) -> list[str]:
  if s.tree_rows % s.num_children:
    return [f"config field search.tree_rows={s.tree_rows}: visits targets take "
            f"search.num_children={s.num_children} rows per node, so it must be a "
            "multiple of it"]
  return []


@dataclasses.dataclass(frozen=True)
class SearchTarget:
  """What the learner gets from an mcts_distill tree (`search.targets`). A new kind joins
  SEARCH_TARGETS with its trajectories function and these facts about its rows."""

  # (model, search output, tokens searched, prompt lengths, problems, keys, RolloutSettings,
  # SearchSettings, reward_fn) -> Trajectories
  trajectories: Callable
  # (prompts, SearchSettings, RolloutSettings) -> (rows, tokens per row) the learner receives
  learner_shape: Callable
  brings_advantages: bool  # rows carry their own per-token advantages
  # rows carry no behaviour log-probs: the loss is against the current policy, scored at
  # the prior's temperature, 1 (else at the search's, which sampled them)
  scores_current_policy: bool = False
  completes: Callable = lambda search: False  # samples completions after the search
  check: Callable = lambda search: []  # config.search -> its problems with this kind


SEARCH_TARGETS = {
    "path": SearchTarget(
        _path_trajectories, brings_advantages=False,
        learner_shape=lambda prompts, search, rollout: (
            prompts, search.lm.max_path_tokens + rollout.max_completion_tokens),
        completes=lambda search: search.complete_path),
    "tree": SearchTarget(
        _tree_trajectories, brings_advantages=True,
        learner_shape=lambda prompts, search, rollout: (
            prompts * search.tree_rows,
            search.lm.max_path_tokens + lm_expand.rollout_width(search.lm))),
    "visits": SearchTarget(
        _visit_trajectories, brings_advantages=True, scores_current_policy=True,
        learner_shape=lambda prompts, search, rollout: (
            prompts * (search.tree_rows // search.lm.num_children) * search.lm.num_children,
            search.lm.max_path_tokens),
        check=_visit_check),
}
