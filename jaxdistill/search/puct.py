"""pUCT selection, virtual loss and backup, written for ONE tree (the caller vmaps over B).

Here a `Tree` has no batch axis: node arrays are [N], edge arrays [N, K], num_nodes [].

Score of edge a at node s:
    Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
with Q = reward + discount * mean value of the child, `first_play_value` for a child with no
completed visit, P = softmax(prior logits). An edge whose prior logit is -inf is invalid
(e.g. a duplicate candidate) and never selected. Virtual loss of agents in flight:
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
  visits, pending = tree.child_visits(node), tree.child_pending(node)  # [K]
  if virtual_loss == "value":  # agents in flight count as visits that returned a loss
    children = tree.children[node]
    child = jnp.maximum(children, 0)
    value_sum = jnp.where(children >= 0, tree.value_sum[child], 0.0)
    mean = (value_sum - virtual_loss_value * pending) / jnp.maximum(visits + pending, 1)
    q = tree.reward[child] + tree.discount[child] * mean
    seen = visits + pending > 0
  else:
    q, seen = tree.qvalues(node), visits > 0
  q = jnp.where(seen, q, first_play_value)
  parent_visits = (tree.visit_count[node] + tree.pending[node]).astype(jnp.float32)
  logits = tree.prior_logits[node]
  prior = jax.nn.softmax(logits)
  score = q + c_puct * prior * jnp.sqrt(parent_visits) / (1.0 + visits + pending)
  return jnp.where(jnp.isneginf(logits), -jnp.inf, score)  # -inf prior: an invalid edge


def unrolled_while(cond, body, state, unroll: int):
  """lax.while_loop that advances `unroll` steps per iteration (each guarded by cond).

  On GPUs every while-loop iteration ends with a device-to-host copy of its predicate; tree
  walks take one iteration per level, so walking `unroll` levels per iteration cuts those
  round trips `unroll`-fold for a few masked steps at the end."""

  def step(state):
    state = body(state)  # cond held on entry
    for _ in range(unroll - 1):
      go = cond(state)
      state = jax.tree.map(lambda new, old: jnp.where(go, new, old), body(state), state)
    return state

  return jax.lax.while_loop(cond, step, state)


def select(tree: Tree, root_scores=None, *, track_pending: bool = False, unroll: int = 1,
           **score_kwargs):
  """Walk from the root by argmax score to the first edge that leads to no expanded node.

  `root_scores` [K], when given, replaces pUCT at the root (Gumbel selection). Returns
  (tree, node, action, child): `child` is NO_NODE for an untaken edge, a node not yet
  expanded (claimed by an earlier agent this iteration), or a terminal node. With
  `track_pending` every node the walk leaves (root to `node`) gets one virtual visit, added
  after its own scores were read, so later agents see this one in flight.
  """

  def descend(pending, node, scores=None):
    if scores is None:
      scores = edge_scores(tree.replace(pending=pending), node, **score_kwargs)
    action = jnp.argmax(scores).astype(jnp.int32)
    if track_pending:
      pending = pending.at[node].add(1)
    return pending, action, tree.children[node, action]

  def cond(state):
    _, _, _, child = state
    safe = jnp.maximum(child, 0)
    return (child >= 0) & tree.expanded[safe] & ~tree.terminal[safe]

  def body(state):
    pending, _, _, child = state
    pending, action, grandchild = descend(pending, child)
    return pending, child, action, grandchild

  root = jnp.full_like(tree.num_nodes, ROOT)
  pending, action, child = descend(tree.pending, root, root_scores)
  pending, node, action, child = unrolled_while(cond, body, (pending, root, action, child),
                                                unroll)
  return tree.replace(pending=pending), node, action, child


def claim(tree: Tree, node, action, child, track_pending: bool = False):
  """Make the selected edge this agent's leaf (after `select`, which gave the path above it
  its virtual visits when tracking pending ones).

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
  if track_pending:  # the leaf's own virtual visit (`node` already has one from select)
    tree = tree.replace(pending=tree.pending.at[leaf].add((leaf != node).astype(jnp.int32)))
  return tree, leaf, is_new, collided


def backup(tree: Tree, leaf, track_pending: bool = False, unroll: int = 1):
  """Back the leaf's value up to the root; removes this agent's virtual visit."""

  def body(state):
    visits, sums, pending, node, ret = state
    visits = visits.at[node].add(1)
    sums = sums.at[node].add(ret)
    if track_pending:
      pending = pending.at[node].add(-1)
    ret = tree.reward[node] + tree.discount[node] * ret
    return visits, sums, pending, tree.parent[node], ret

  state = (tree.visit_count, tree.value_sum, tree.pending, leaf, tree.raw_value[leaf])
  visits, sums, pending, _, _ = unrolled_while(lambda s: s[3] != NO_NODE, body, state, unroll)
  return tree.replace(visit_count=visits, value_sum=sums, pending=pending)
