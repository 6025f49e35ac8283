"""Gumbel root selection with Sequential Halving (as mctx.gumbel_muzero_policy), ONE tree.

At the root, actions are scored `gumbel + logits + sigma(completed Q)` and only those whose
visit count equals the currently considered count may be chosen, which visits the
`max_num_considered_actions` best-looking actions in halving rounds. Interior nodes keep
pUCT. Completed Q (unvisited children take the mixed value), min-max rescaling and
sigma = (maxvisit_init + max visits) * value_scale * q follow mctx's
`qtransform_completed_by_mix_value` defaults.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.search.tree import ROOT, Tree


def considered_visit_sequence(max_considered: int, num_simulations: int) -> tuple[int, ...]:
  """Visit count a root action must have to be chosen at each simulation."""
  if max_considered <= 1:
    return tuple(range(num_simulations))
  log2max = int(math.ceil(math.log2(max_considered)))
  sequence, visits, considered = [], [0] * max_considered, max_considered
  while len(sequence) < num_simulations:
    extra = max(1, int(num_simulations / (log2max * considered)))
    for _ in range(extra):
      sequence.extend(visits[:considered])
      for i in range(considered):
        visits[i] += 1
    considered = max(2, considered // 2)
  return tuple(sequence[:num_simulations])


def considered_visit_table(max_considered: int, num_simulations: int) -> np.ndarray:
  """[max_considered + 1, num_simulations] table of the sequences for 0..max actions."""
  return np.array([considered_visit_sequence(m, num_simulations)
                   for m in range(max_considered + 1)], np.int32)


def completed_qvalues(tree: Tree, node, *, value_scale: float = 0.1,
                      maxvisit_init: float = 50.0, epsilon: float = 1e-8):
  """sigma(completed, rescaled Q) [K] of the children of `node`."""
  visits, q = tree.child_visits(node), tree.qvalues(node)
  prior = jnp.maximum(jnp.finfo(jnp.float32).tiny, jax.nn.softmax(tree.prior_logits[node]))
  seen = visits > 0
  total = visits.sum()
  weighted = jnp.sum(jnp.where(seen, prior * q / jnp.where(seen, jnp.sum(
      jnp.where(seen, prior, 0.0)), 1.0), 0.0))
  mixed = (tree.raw_value[node] + total * weighted) / (total + 1)
  completed = jnp.where(seen, q, mixed)
  low, high = completed.min(), completed.max()
  completed = (completed - low) / jnp.maximum(high - low, epsilon)
  return (maxvisit_init + visits.max()) * value_scale * completed


def score_considered(considered_visit, gumbel, logits, qvalues, visits):
  """gumbel + logits + q for actions with the considered visit count, -inf elsewhere."""
  logits = logits - logits.max()
  penalty = jnp.where(visits == considered_visit, 0.0, -jnp.inf)
  return jnp.maximum(-1e9, gumbel + logits + qvalues) + penalty


def root_scores(tree: Tree, gumbel, table, num_considered: int):
  """Scores [K] at the root for the next simulation (pending agents count as visits)."""
  visits = tree.child_visits(ROOT, pending=True)
  simulation = jnp.minimum(visits.sum(), table.shape[1] - 1)
  considered = jnp.asarray(table)[num_considered, simulation]
  return score_considered(considered, gumbel, tree.prior_logits[ROOT],
                          completed_qvalues(tree, ROOT), visits)


def root_action(tree: Tree, gumbel):
  """The action Gumbel search recommends at the root (among the most-visited considered)."""
  visits = tree.child_visits(ROOT)
  scores = score_considered(visits.max(), gumbel, tree.prior_logits[ROOT],
                            completed_qvalues(tree, ROOT), visits)
  return jnp.argmax(scores).astype(jnp.int32)
