"""Batched step-level MCTS over an abstract expand function (an mctx-like interface).

One iteration: W agents per tree select one after another (pUCT with virtual loss on their
paths), the new leaves of all B trees are expanded in ONE batched `expand_fn` call, then all
W paths are backed up. With W = 1 this is mctx.search with a pUCT selection; I iterations of
W agents are I * W simulations in I sequential expansion calls.

    expand_fn(keys [M], parent_embedding (pytree of [M, ...]), action [M])
        -> (ExpandOutput with [M] / [M, K] fields, embedding of the new nodes [M, ...])

When the root carries a `context`, expand_fn takes a fourth argument, the rows' `Lineage`
(every node of their trees, the context, the tree and new node id of each row): an expansion
that reads its ancestors' state (the LM's KV cache) without copying it into every node.

`keys` holds one key per call row, derived from the tree's own key, the iteration and the
agent: a tree's search depends only on its key, so sharding trees over devices changes
nothing. Rows of agents that collided or revisited a terminal node are computed and dropped
(static shapes).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from jaxdistill.search import gumbel, puct
from jaxdistill.search.tree import (NO_NODE, ROOT, ExpandOutput, Lineage, RootOutput, Tree,
                                   init_tree)

ExpandFn = Callable[[jax.Array, Any, jax.Array], tuple[ExpandOutput, Any]]


@chex.dataclass(frozen=True)
class SearchOutput:
  """The searched trees and their most-visited root-to-leaf paths."""

  tree: Tree
  path_nodes: jax.Array  # [B, D] int32 node ids after the root, NO_NODE past the end
  path_actions: jax.Array  # [B, D] int32 action taken at each depth, NO_NODE past the end
  path_length: jax.Array  # [B] int32 edges on the path
  path_visits: jax.Array  # [B, D] int32 visit count of each node on the path
  path_child_visits: jax.Array  # [B, D, K] int32 visits of the children where each action
  #                               was chosen (AlphaZero policy targets), zeros past the end
  collisions: jax.Array  # [B] int32 agents that reached an edge claimed in the same iteration
  num_expanded: jax.Array  # [B] int32 nodes expanded (root excluded)


def _select_agents(tree: Tree, gumbel_noise, num_agents: int, score_kwargs: dict,
                   gumbel_table=None, num_considered: int = 0, unroll: int = 1):
  """W agents of ONE tree select and claim leaves in turn (virtual loss in between; with
  one agent there is nobody to see it, so none is recorded)."""
  track = num_agents > 1

  def agent(tree, _):
    root_scores = None
    if gumbel_table is not None:
      root_scores = gumbel.root_scores(tree, gumbel_noise, gumbel_table, num_considered)
    tree, node, action, child = puct.select(tree, root_scores, track_pending=track,
                                            unroll=unroll, **score_kwargs)
    tree, leaf, is_new, collided = puct.claim(tree, node, action, child, track_pending=track)
    return tree, (node, action, leaf, is_new, collided)

  return jax.lax.scan(agent, tree, None, length=num_agents)


def _backup_agents(tree: Tree, leaves, unroll: int = 1):
  """Back up the W leaves of ONE tree."""
  track = leaves.shape[0] > 1
  tree, _ = jax.lax.scan(lambda t, leaf: (puct.backup(t, leaf, track, unroll), None), tree,
                         leaves)
  return tree


def _write_expansions(tree: Tree, leaves, is_new, output: ExpandOutput, embedding) -> Tree:
  """Store the expansion results of new leaves [B, W]; other rows are dropped."""
  rows = jnp.arange(tree.batch_size)[:, None]
  target = jnp.where(is_new, leaves, tree.capacity)  # out of range: dropped

  def put(array, value):
    return array.at[rows, target].set(value.astype(array.dtype), mode="drop")

  return tree.replace(
      prior_logits=put(tree.prior_logits, output.prior_logits),
      raw_value=put(tree.raw_value, output.value),
      reward=put(tree.reward, output.reward),
      discount=put(tree.discount, output.discount),
      terminal=put(tree.terminal, output.terminal),
      expanded=put(tree.expanded, jnp.ones_like(is_new)),
      embeddings=jax.tree.map(put, tree.embeddings, embedding))


def most_visited_path(tree: Tree, max_length: int, root_actions=None):
  """Follow the most-visited child from the root (first index on ties), per tree.

  root_actions [B], when given, replaces the most-visited choice at the root (Gumbel).
  """

  def one_tree(tree, root_action):
    def step(carry, _):
      node, alive = carry
      children = tree.children[node]
      visits = tree.child_visits(node)
      action = jnp.argmax(visits).astype(jnp.int32)
      if root_action is not None:
        action = jnp.where(node == ROOT, root_action, action)
      moves = alive & (visits[action] > 0)
      child = jnp.where(moves, children[action], NO_NODE)
      out = (child, jnp.where(moves, action, NO_NODE),
             jnp.where(moves, visits[action], 0),
             jnp.where(moves, visits, 0))
      return (jnp.where(moves, child, node), moves), out

    start = (jnp.full_like(tree.num_nodes, ROOT), tree.expanded[ROOT])
    _, (nodes, actions, visits, child_visits) = jax.lax.scan(step, start, None,
                                                             length=max_length)
    return nodes, actions, (nodes >= 0).sum().astype(jnp.int32), visits, child_visits

  if root_actions is None:
    return jax.vmap(lambda t: one_tree(t, None))(tree)
  return jax.vmap(one_tree)(tree, root_actions)


def default_loop_unroll() -> int:
  """Tree levels per loop iteration for the backend in use (see `search`)."""
  return 4 if jax.default_backend() == "gpu" else 1


def search(root: RootOutput, expand_fn: ExpandFn, tree_keys: jax.Array, *,
           num_iterations: int, num_agents: int = 1, c_puct: float = 0.5,
           first_play_value: float = 0.0, virtual_loss: str = "visit",
           virtual_loss_value: float = 1.0, max_path_length: int | None = None,
           root_selection: str = "puct", max_num_considered_actions: int = 16,
           gumbel_scale: float = 1.0, root_gumbel=None,
           loop_unroll: int | None = None) -> SearchOutput:
  """Run num_iterations x num_agents simulations on each of B trees (tree_keys [B]).

  root_selection 'gumbel' selects at the root by Gumbel + Sequential Halving over
  max_num_considered_actions actions (noise from the tree key, or root_gumbel [B, K]) and
  recommends the root action the mctx way; interior nodes always use pUCT. loop_unroll:
  tree levels walked per loop iteration in selection and backup; results do not depend on
  it. Default: 4 on GPUs, where each loop iteration costs a device-to-host round trip, 1
  elsewhere (CPUs pay for the masked levels; TPUs run loop control on the device).
  """
  if loop_unroll is None:
    loop_unroll = default_loop_unroll()
  batch, num_actions = root.prior_logits.shape
  chex.assert_shape(tree_keys, (batch,))
  if virtual_loss not in puct.VIRTUAL_LOSS_KINDS:
    raise ValueError(f"virtual_loss must be one of {puct.VIRTUAL_LOSS_KINDS}, "
                     f"got {virtual_loss!r}")
  if num_iterations < 1 or num_agents < 1 or loop_unroll < 1:
    raise ValueError("num_iterations, num_agents and loop_unroll must be >= 1")
  if root_selection not in ("puct", "gumbel"):
    raise ValueError(f"root_selection must be 'puct' or 'gumbel', got {root_selection!r}")
  capacity = 1 + num_iterations * num_agents
  score_kwargs = dict(c_puct=c_puct, first_play_value=first_play_value,
                      virtual_loss=virtual_loss, virtual_loss_value=virtual_loss_value)
  table, num_considered = None, 0
  if root_gumbel is None:
    root_gumbel = gumbel_scale * jax.vmap(lambda k: jax.random.gumbel(
        jax.random.fold_in(k, 0x7FFFFFFF), (num_actions,)))(tree_keys)
  if root_selection == "gumbel":
    num_considered = min(max_num_considered_actions, num_actions)
    table = gumbel.considered_visit_table(num_considered, capacity - 1)
  select_agents = jax.vmap(functools.partial(
      _select_agents, num_agents=num_agents, score_kwargs=score_kwargs, gumbel_table=table,
      num_considered=num_considered, unroll=loop_unroll))

  def iteration(i, state):
    tree, collisions = state
    tree, (parents, actions, leaves, is_new, collided) = select_agents(tree, root_gumbel)
    rows = jnp.arange(batch)[:, None]
    parent_embedding = jax.tree.map(lambda e: e[rows, parents], tree.embeddings)
    flat = lambda x: x.reshape((batch * num_agents,) + x.shape[2:])
    keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, i), num_agents))(
        tree_keys)
    args = (flat(keys), jax.tree.map(flat, parent_embedding), flat(actions))
    if root.context is not None:
      args += (Lineage(embeddings=tree.embeddings, context=root.context,
                       tree=flat(jnp.broadcast_to(rows, leaves.shape)).astype(jnp.int32),
                       node=flat(leaves).astype(jnp.int32)),)
    output, embedding = expand_fn(*args)
    unflat = lambda x: x.reshape((batch, num_agents) + x.shape[1:])
    output = jax.tree.map(unflat, output)
    tree = _write_expansions(tree, leaves, is_new, output, jax.tree.map(unflat, embedding))
    tree = jax.vmap(functools.partial(_backup_agents, unroll=loop_unroll))(tree, leaves)
    return tree, collisions + collided.sum(-1).astype(jnp.int32)

  tree = init_tree(root, capacity)
  tree, collisions = jax.lax.fori_loop(0, num_iterations, iteration,
                                       (tree, jnp.zeros_like(tree.num_nodes)))
  root_actions = (jax.vmap(gumbel.root_action)(tree, root_gumbel)
                  if root_selection == "gumbel" else None)
  nodes, actions, length, visits, child_visits = most_visited_path(
      tree, max_path_length or capacity - 1, root_actions)
  return SearchOutput(tree=tree, path_nodes=nodes, path_actions=actions, path_length=length,
                      path_visits=visits, path_child_visits=child_visits,
                      collisions=collisions, num_expanded=tree.num_nodes - 1)
