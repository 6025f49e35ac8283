"""Batched search trees: one frozen dataclass of static-shape arrays, and its initialisation.

B trees, N = 1 + iterations * agents nodes, K children per node. Node ids are handed out
in order (node 0 is the root), so there is no allocator and no index ever leaves [0, N).
Values are stored as sums so that backup is an add; Q of an edge is
`reward + discount * value_sum / visit_count` of its child, as in mctx.

What a node "is" lives in `embeddings`, a pytree of [B, N, ...] arrays owned by the expand
function: for the LM it holds the K candidate steps the node sampled (the edge arrays
tokens [K, L], lengths [K], summed log-probs [K]) and the node's path buffer.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

NO_NODE = -1
ROOT = 0


@chex.dataclass(frozen=True)
class RootOutput:
  """What the search starts from (as mctx.RootFnOutput)."""

  prior_logits: jax.Array  # [B, K]
  value: jax.Array  # [B]
  embedding: Any  # pytree of [B, ...]
  # pytree of [B, ...] per tree that every expansion of the tree may read and none writes
  # (the LM's prompt KV); when given, the expand function also receives a `Lineage`
  context: Any = None


@chex.dataclass(frozen=True)
class Lineage:
  """What an expand function whose root carries a context gets beside the parent: enough to
  read any node of its row's tree (the LM gathers its path's KV from its ancestors)."""

  embeddings: Any  # pytree of [B, N, ...]: every node's embedding, the new ones not yet
  context: Any  # RootOutput.context, [B, ...]
  tree: jax.Array  # [M] int32 the tree of each row
  node: jax.Array  # [M] int32 the id the row's new node gets (dropped rows: any id)


@chex.dataclass(frozen=True)
class ExpandOutput:
  """What the expand function returns for each new node (as mctx.RecurrentFnOutput)."""

  prior_logits: jax.Array  # [M, K] over the node's K children
  value: jax.Array  # [M] the node's value; for a terminal node, its task reward
  reward: jax.Array  # [M] reward on the edge into the node
  terminal: jax.Array  # [M] bool: the node is never expanded
  discount: jax.Array  # [M] discount on the edge into the node (1 for the LM)


@chex.dataclass(frozen=True)
class Tree:
  """B search trees of N nodes with K children each."""

  parent: jax.Array  # [B, N] int32, NO_NODE for the root and unused nodes
  action_from_parent: jax.Array  # [B, N] int32, NO_NODE for the root and unused nodes
  depth: jax.Array  # [B, N] int32, 0 at the root
  visit_count: jax.Array  # [B, N] int32, completed simulations through the node
  value_sum: jax.Array  # [B, N] float32, sum of backed-up returns
  raw_value: jax.Array  # [B, N] float32, the node's own evaluation (terminal: its reward)
  reward: jax.Array  # [B, N] float32, reward on the edge into the node
  discount: jax.Array  # [B, N] float32, discount on the edge into the node
  pending: jax.Array  # [B, N] int32, virtual visits of agents still in flight
  terminal: jax.Array  # [B, N] bool, never expanded
  expanded: jax.Array  # [B, N] bool, evaluated (prior and value are set)
  children: jax.Array  # [B, N, K] int32, NO_NODE until the edge is taken
  prior_logits: jax.Array  # [B, N, K] float32
  embeddings: Any  # pytree of [B, N, ...]
  num_nodes: jax.Array  # [B] int32, next node id to hand out

  @property
  def batch_size(self) -> int:
    return self.parent.shape[0]

  @property
  def capacity(self) -> int:
    return self.parent.shape[-1]  # also for one (vmapped) tree

  @property
  def num_actions(self) -> int:
    return self.children.shape[-1]

  # The methods below read one tree (fields [N, ...]): the search kernels are written for one
  # tree and vmapped, as in mctx; batched callers vmap them too.

  def child_visits(self, node, pending: bool = False):
    """Visit counts [K] of the children of `node` (0 for untaken edges); with pending, the
    agents still in flight through a child count as its visits."""
    children = self.children[node]
    child = jnp.maximum(children, 0)
    visits = self.visit_count[child] + (self.pending[child] if pending else 0)
    return jnp.where(children >= 0, visits, 0)

  def child_pending(self, node):
    """Virtual visits [K] of agents in flight through each child of `node` (0 untaken)."""
    children = self.children[node]
    return jnp.where(children >= 0, self.pending[jnp.maximum(children, 0)], 0)

  def qvalues(self, node):
    """Q [K] of the edges of `node`: the edge's reward plus the discounted mean backed-up
    value of its child; 0 for children without a completed visit."""
    children = self.children[node]
    child = jnp.maximum(children, 0)
    visits = self.child_visits(node)
    mean = self.value_sum[child] / jnp.maximum(visits, 1)
    return jnp.where(visits > 0, self.reward[child] + self.discount[child] * mean, 0.0)

  def node_values(self):
    """V [N] of every node: its mean backed-up value, or its own evaluation before any
    visit."""
    return jnp.where(self.visit_count > 0, self.value_sum / jnp.maximum(self.visit_count, 1),
                     self.raw_value)


def init_tree(root: RootOutput, capacity: int) -> Tree:
  """A tree of `capacity` nodes holding only the root (one visit, its own value)."""
  batch, num_actions = root.prior_logits.shape
  chex.assert_shape(root.value, (batch,))
  nodes = lambda value, dtype: jnp.full((batch, capacity), value, dtype)
  edges = lambda value, dtype: jnp.full((batch, capacity, num_actions), value, dtype)
  def node_array(x):  # [B, ...] -> [B, N, ...] holding x at the root
    return jnp.zeros((batch, capacity) + x.shape[1:], x.dtype).at[:, ROOT].set(x)

  embeddings = jax.tree.map(node_array, root.embedding)
  value = root.value.astype(jnp.float32)
  return Tree(
      parent=nodes(NO_NODE, jnp.int32),
      action_from_parent=nodes(NO_NODE, jnp.int32),
      depth=nodes(0, jnp.int32),
      visit_count=nodes(0, jnp.int32).at[:, ROOT].set(1),
      value_sum=nodes(0.0, jnp.float32).at[:, ROOT].set(value),
      raw_value=nodes(0.0, jnp.float32).at[:, ROOT].set(value),
      reward=nodes(0.0, jnp.float32),
      discount=nodes(1.0, jnp.float32),
      pending=nodes(0, jnp.int32),
      terminal=nodes(False, bool),
      expanded=nodes(False, bool).at[:, ROOT].set(True),
      children=edges(NO_NODE, jnp.int32),
      prior_logits=edges(0.0, jnp.float32).at[:, ROOT].set(root.prior_logits.astype(jnp.float32)),
      embeddings=embeddings,
      num_nodes=jnp.ones((batch,), jnp.int32),
  )
