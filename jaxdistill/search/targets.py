"""Learner trajectories from a whole search tree (`search.targets='tree'` or 'visits').

Rows of one tree: with `rollout_to_end`, every rollout of every evaluated node (path +
rollout: a complete answer); otherwise every terminal node's path. At most `max_rows` per
tree (the first in node order), the rest masked, so the learner batch has static shapes.

Advantage of each generated token of a row (target-aligned, as the learner wants it):
  global: the row's reward standardised over the valid rows of its tree (TreeRL's global
          advantage; a prefix shared by many rows is pushed by the sum of theirs);
  step (optional): the tokens of the step into node c get V(c) - V(parent c), V the node's
          mean backed-up value; a rollout's own tokens after its node n get R - V(n).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxdistill import sampling
from jaxdistill.search import lm_expand
from jaxdistill.search.tree import NO_NODE, ROOT, Tree


@chex.dataclass(frozen=True)
class TreeRows:
  """Trajectories taken from B trees, `max_rows` per tree (rows [B * max_rows])."""

  tokens: jax.Array  # [M, S] int32 prompt + generated, pad after length
  # [M, S] float32 log-prob each generated token was sampled with (0 elsewhere); None for
  # visit rows, whose cross-entropy target is defined against the current policy
  behaviour_logprobs: jax.Array | None
  prompt_length: jax.Array  # [M] int32
  length: jax.Array  # [M] int32 (= prompt_length on an unused row: no generated token)
  reward: jax.Array  # [M] float32
  valid: jax.Array  # [M] bool
  node: jax.Array  # [M] int32 the row's node (its rollout's node, or the terminal node)
  tree: jax.Array  # [M] int32 index of the row's tree


def tree_rows(tree: Tree, max_rows: int, rollout_to_end: bool, pad_id: int) -> TreeRows:
  """The trajectories of each tree (see the module docstring)."""
  emb = tree.embeddings
  batch, capacity = tree.parent.shape
  if rollout_to_end:
    k = emb.rollout_lengths.shape[-1]
    evaluated = tree.expanded & ~tree.terminal  # [B, N]
    candidates = jnp.repeat(evaluated, k, axis=1)  # [B, N * K] in (node, k) order
  else:
    k = 1
    candidates = tree.terminal & tree.expanded & (tree.parent >= 0)
  short = max_rows - candidates.shape[1]
  if short > 0:  # fewer candidates than rows: pad with never-valid ones
    candidates = jnp.pad(candidates, ((0, 0), (0, short)))
  order = jnp.argsort(~candidates, axis=1, stable=True)[:, :max_rows]  # valid ones first
  order = jnp.minimum(order, capacity * k - 1)  # padding columns point at a real slot
  valid = jnp.take_along_axis(candidates, order, axis=1)
  node, choice = order // k, order % k
  rows = jnp.arange(batch)[:, None]
  path = emb.path_tokens[rows, node]  # [B, T, P]
  path_logprobs = emb.path_logprobs[rows, node]
  path_length = emb.path_length[rows, node]
  prompt_length = emb.prompt_length[rows, node]
  if rollout_to_end:
    completion = emb.rollout_tokens[rows, node, choice]  # [B, T, R]
    completion_length = jnp.where(valid, emb.rollout_lengths[rows, node, choice], 0)
    reward = emb.rollout_rewards[rows, node, choice]
    flat = lambda x: x.reshape((batch * max_rows,) + x.shape[2:])
    tokens, length = sampling.concat_completion(flat(path), flat(path_length),
                                                 flat(completion), flat(completion_length),
                                                 pad_id)
    width = tokens.shape[1]
    behaviour = jnp.pad(flat(path_logprobs), ((0, 0), (0, width - path.shape[-1])))
    behaviour = behaviour + sampling.completion_values(
        flat(path_length), flat(emb.rollout_logprobs[rows, node, choice]),
        flat(completion_length), width)
  else:
    reward = tree.raw_value[rows, node]  # a terminal node's value is its task reward
    flat = lambda x: x.reshape((batch * max_rows,) + x.shape[2:])
    tokens, length = flat(path), flat(jnp.where(valid, path_length, prompt_length))
    behaviour = flat(path_logprobs)
  behaviour = jnp.where(flat(valid)[:, None], behaviour, 0.0)
  return TreeRows(tokens=tokens, behaviour_logprobs=behaviour,
                  prompt_length=flat(prompt_length), length=length,
                  reward=flat(jnp.where(valid, reward, 0.0)), valid=flat(valid),
                  node=flat(node), tree=flat(jnp.broadcast_to(rows, node.shape)))


def global_advantages(rows: TreeRows, max_rows: int, eps: float = 1e-6):
  """Row rewards standardised over the valid rows of their tree [M] (0 on invalid rows)."""
  reward = rows.reward.reshape(-1, max_rows)
  valid = rows.valid.reshape(-1, max_rows).astype(jnp.float32)
  count = jnp.maximum(valid.sum(-1, keepdims=True), 1.0)
  mean = (reward * valid).sum(-1, keepdims=True) / count
  std = jnp.sqrt((jnp.square(reward - mean) * valid).sum(-1, keepdims=True) / count)
  return ((reward - mean) / (std + eps) * valid).reshape(-1)


def step_advantages(tree: Tree, rows: TreeRows):
  """Per-token step-level advantages [M, S] (token positions, not target-aligned).

  Token t of a row lies on the step into some ancestor c of the row's node (the step's
  span is [path_length(parent c), path_length(c))) and gets V(c) - V(parent c); tokens
  after the node's own path (its rollout) get R - V(node); the prompt gets 0."""
  values = tree.node_values()  # [B, N]
  emb = tree.embeddings
  capacity = tree.parent.shape[1]
  tree_index = rows.tree
  node_depth = tree.depth[tree_index, rows.node]  # [M]

  def ancestors(tree_id, node, depth):  # [N] node ids by depth (root first), NO_NODE after
    def body(i, state):
      chain, current = state
      chain = chain.at[depth - i].set(jnp.where(i <= depth, current, chain[depth - i]))
      return chain, jnp.where(i < depth, tree.parent[tree_id, current], current)
    chain = jnp.full((capacity,), NO_NODE, jnp.int32)
    chain, _ = jax.lax.fori_loop(0, capacity, body, (chain, node))
    return jnp.where(jnp.arange(capacity) <= depth, chain, NO_NODE)

  chain = jax.vmap(ancestors)(tree_index, rows.node, node_depth)  # [M, N]
  safe = jnp.maximum(chain, 0)
  gather = lambda x: x[tree_index[:, None], safe]
  ends = jnp.where(chain >= 0, gather(emb.path_length), jnp.iinfo(jnp.int32).max)  # [M, N]
  chain_values = gather(values)  # [M, N] V along the chain, root first
  # edge j (the step into chain[j]): V(chain[j]) - V(chain[j - 1]); none into the root
  edge = chain_values - jnp.concatenate([chain_values[:, :1], chain_values[:, :-1]], axis=1)
  positions = jnp.arange(rows.tokens.shape[1])
  # step index of each token: how many ancestors' paths end at or before it
  step = jax.vmap(lambda e: jnp.searchsorted(e, positions, side="right"))(ends)  # [M, S]
  on_path = step <= node_depth[:, None]
  from_edge = jnp.take_along_axis(edge, jnp.minimum(step, capacity - 1), axis=1)
  tail = rows.reward - values[tree_index, rows.node]  # the rollout after the node
  advantage = jnp.where(on_path, from_edge, tail[:, None])
  generated = (positions[None] >= rows.prompt_length[:, None]) & (
      positions[None] < rows.length[:, None])
  return jnp.where(generated & rows.valid[:, None], advantage, 0.0)


def token_advantages(tree: Tree, rows: TreeRows, max_rows: int, step: bool):
  """Target-aligned advantages [M, S - 1]: entry t is about token t + 1."""
  per_token = jnp.broadcast_to(global_advantages(rows, max_rows)[:, None],
                               rows.tokens.shape)
  if step:
    per_token = per_token + step_advantages(tree, rows)
  return per_token[:, 1:]


def visit_rows(out, config: lm_expand.LMSearchSettings, depths: int):
  """AlphaZero targets: (TreeRows [B * depths * K], target-aligned advantages [M, P - 1]).

  For each of the first `depths` nodes where the most-visited path chose an action (the
  root, then the path's nodes) and each of its K candidate steps: a row holding the node's
  path + that candidate, of which only the candidate's tokens are trained. The loss wanted
  is the cross-entropy between the visit distribution v over the node's children and the
  policy's distribution over its K candidates, p = softmax(summed log-probs at temperature
  1; duplicates merged as `dedup_children` merges them). Its gradient with respect to a
  candidate's summed log-prob s_k is p_k - v_k, so the learner's policy-gradient surrogate
  -A * log pi with A = (v_k - p_k) * (candidate tokens) on every token of candidate k (the
  learner averages over a row's tokens) has exactly the cross-entropy's gradient at the
  behaviour policy, whatever the loss (CISPO or PPO: their ratio is 1 there). That policy is
  the current one at temperature 1 (the prior's), not the sampler: these rows carry no
  behaviour log-probs, and the learner scores them against its own at assembly. Nodes whose
  children were visited fewer than twice carry a one-hot choice, not a distribution: not
  used. Row rewards (the value head's targets) are the children's backed-up values (the
  node's own value for a child never visited); a duplicate candidate's row is not used.
  """
  tree, emb = out.tree, out.tree.embeddings
  batch, capacity, k = tree.children.shape
  available = out.path_child_visits.shape[1]
  pad = lambda x: jnp.pad(x, ((0, 0), (0, max(depths - available, 0))) + ((0, 0),) *
                          (x.ndim - 2))[:, :depths]
  child_visits = pad(out.path_child_visits).astype(jnp.float32)  # [B, D, K]
  nodes = jnp.concatenate([jnp.full_like(out.path_nodes[:, :1], ROOT),
                           jnp.maximum(out.path_nodes, 0)], axis=1)
  nodes = pad(nodes[:, :available])  # [B, D] the node where depth d's action was chosen
  total = child_visits.sum(-1)
  used = (jnp.arange(depths)[None] < out.path_length[:, None]) & (total >= 2)  # [B, D]
  target = child_visits / jnp.maximum(total, 1.0)[..., None]
  rows = jnp.arange(batch)[:, None]
  logprobs = emb.candidate_logprobs[rows, nodes]  # [B, D, K]
  if config.dedup_children:
    logprobs = lm_expand.merge_duplicate_children(
        emb.candidate_tokens[rows, nodes].reshape(batch * depths, k, -1),
        emb.candidate_lengths[rows, nodes].reshape(batch * depths, k),
        logprobs.reshape(batch * depths, k)).reshape(batch, depths, k)
  policy = jax.nn.softmax(logprobs, axis=-1)
  valid = used[..., None] & jnp.isfinite(logprobs)  # [B, D, K]
  values = tree.node_values()  # [B, N]
  children = tree.children[rows, nodes]  # [B, D, K]
  visited = children >= 0
  child_value = values[rows[..., None], jnp.maximum(children, 0)]
  reward = jnp.where(visited, child_value, values[rows, nodes][..., None])
  flat = lambda x: x.reshape((batch * depths * k,) + x.shape[3:])
  per_child = lambda x: flat(jnp.repeat(x[rows, nodes][:, :, None], k, axis=2))
  node_length = per_child(emb.path_length)
  tokens, child_length, _ = lm_expand.extend_path(
      config, per_child(emb.path_tokens), node_length,
      flat(emb.candidate_tokens[rows, nodes]), flat(emb.candidate_lengths[rows, nodes]))
  valid = flat(valid)
  length = jnp.where(valid, child_length, node_length)
  steps = (length - node_length).astype(jnp.float32)
  advantage = jnp.where(valid, flat(target - policy) * steps, 0.0)
  out_rows = TreeRows(tokens=tokens, prompt_length=node_length, behaviour_logprobs=None,
                      length=length, reward=jnp.where(valid, flat(reward), 0.0), valid=valid,
                      node=flat(jnp.broadcast_to(nodes[..., None], (batch, depths, k))),
                      tree=flat(jnp.broadcast_to(rows[..., None], (batch, depths, k))))
  per_token = jnp.broadcast_to(advantage[:, None], tokens.shape)
  return out_rows, per_token[:, 1:]
