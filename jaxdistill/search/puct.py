"""pUCT selection, virtual loss and backup, written for ONE tree (the caller vmaps over B).

Here a `Tree` has no batch axis: node arrays are [N], edge arrays [N, K], num_nodes [].

Score of edge a at node s:
    Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
with Q = reward + discount * mean value of the child, `first_play_value` for a child with no
completed visit, P = softmax(prior logits). Virtual loss of agents in flight:
  'visit' (the reference system): pending visits count in N(s) and N(s, a), Q unchanged;
  'value' (classic): as 'visit', and each pending visit also adds a return of
          -virtual_loss_value to the child's mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.search.tree import NO_NODE, ROOT, Tree

VIRTUAL_LOSS_KINDS = ("visit", "value")


def edge_scores(tree: Tree, node, *, c_puct: float, first_play_value: float,
                virtual_loss: str = "visit", virtual_loss_value: float = 1.0):
  """pUCT scores [K] of the edges of `node`."""
  children = tree.children[node]  # [K]
  taken = children >= 0
  child = jnp.maximum(children, 0)
  visits = jnp.where(taken, tree.visit_count[child], 0)
  pending = jnp.where(taken, tree.pending[child], 0)
  value_sum = jnp.where(taken, tree.value_sum[child], 0.0)
  if virtual_loss == "value":
    value_sum = value_sum - virtual_loss_value * pending
    mean = value_sum / jnp.maximum(visits + pending, 1)
    seen = visits + pending > 0
  else:
    mean = value_sum / jnp.maximum(visits, 1)
    seen = visits > 0
  q = tree.reward[child] + tree.discount[child] * mean
  q = jnp.where(seen, q, first_play_value)
  parent_visits = (tree.visit_count[node] + tree.pending[node]).astype(jnp.float32)
  prior = jax.nn.softmax(tree.prior_logits[node])
  return q + c_puct * prior * jnp.sqrt(parent_visits) / (1.0 + visits + pending)


def select(tree: Tree, root_scores=None, **score_kwargs):
  """Walk from the root by argmax score to the first edge that leads to no expanded node.

  `root_scores` [K], when given, replaces pUCT at the root (Gumbel selection). Returns
  (node, action, child): `child` is NO_NODE for an untaken edge, a node not yet expanded
  (claimed by an earlier agent this iteration), or a terminal node.
  """

  def descend(node, scores=None):
    scores = edge_scores(tree, node, **score_kwargs) if scores is None else scores
    action = jnp.argmax(scores).astype(jnp.int32)
    return action, tree.children[node, action]

  def cond(state):
    _, _, child = state
    return (child >= 0) & tree.expanded[jnp.maximum(child, 0)] & ~tree.terminal[
        jnp.maximum(child, 0)]

  def body(state):
    _, _, child = state
    action, grandchild = descend(child)
    return child, action, grandchild

  # the root id comes from tree data, not a constant, so that under shard_map the loop
  # carry is device-varying like everything else in it
  root = jnp.full_like(tree.num_nodes, ROOT)
  action, child = descend(root, root_scores)
  return jax.lax.while_loop(cond, body, (root, action, child))


def claim(tree: Tree, node, action, child):
  """Make the selected edge this agent's leaf and add a virtual visit along its path.

  An untaken edge gets the next node id (to be expanded); an edge another agent claimed
  this iteration is a collision and shares that agent's node. Returns
  (tree, leaf, is_new, collided).
  """
  is_new = child == NO_NODE
  full = tree.num_nodes >= tree.capacity
  is_new = is_new & ~full  # cannot happen with capacity 1 + iterations * agents
  collided = (child >= 0) & ~tree.expanded[jnp.maximum(child, 0)]
  new_id = jnp.minimum(tree.num_nodes, tree.capacity - 1)
  leaf = jnp.where(is_new, new_id, jnp.where(child >= 0, child, node))
  set_if_new = lambda array, index, value: array.at[index].set(
      jnp.where(is_new, value, array[index]))
  tree = tree.replace(
      children=set_if_new(tree.children, (node, action), new_id),
      parent=set_if_new(tree.parent, new_id, node),
      action_from_parent=set_if_new(tree.action_from_parent, new_id, action),
      depth=set_if_new(tree.depth, new_id, tree.depth[node] + 1),
      num_nodes=tree.num_nodes + is_new.astype(jnp.int32))
  tree = tree.replace(pending=_add_along_path(tree.pending, tree.parent, leaf, 1))
  return tree, leaf, is_new, collided


def _add_along_path(array, parent, leaf, amount):
  """array[n] += amount for every node n from leaf up to the root."""

  def body(state):
    array, node = state
    return array.at[node].add(amount), parent[node]

  array, _ = jax.lax.while_loop(lambda s: s[1] != NO_NODE, body, (array, leaf))
  return array


def backup(tree: Tree, leaf):
  """Back the leaf's value up to the root; removes this agent's virtual visit."""

  def body(state):
    visits, sums, pending, node, ret = state
    visits = visits.at[node].add(1)
    sums = sums.at[node].add(ret)
    pending = pending.at[node].add(-1)
    ret = tree.reward[node] + tree.discount[node] * ret
    return visits, sums, pending, tree.parent[node], ret

  state = (tree.visit_count, tree.value_sum, tree.pending, leaf, tree.raw_value[leaf])
  visits, sums, pending, _, _ = jax.lax.while_loop(lambda s: s[3] != NO_NODE, body, state)
  return tree.replace(visit_count=visits, value_sum=sums, pending=pending)
