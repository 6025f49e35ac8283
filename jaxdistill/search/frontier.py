"""DeepSearch's tree search (arXiv 2509.25454; the released code's rules, ../DEEPSEARCH.md in
the project's shared notes): batched over prompts, jitted, one LM call per round for all trees.

A node is a reasoning step (the text up to the task's step delimiter) appended to its
parent's path. Each round every unfinished tree expands one node: it samples the node's
`width` children in one batched decode. The node is the first child of the previous
expansion (a greedy dive) unless that expansion produced a terminal child; then the search
jumps to the frontier node (non-terminal, not yet expanded, not the root) with the highest
    F(s) = l1 * tanh(Q(parent s)) + l2 * H(s) + l3 * sqrt(depth(s) / max_depth),
Q = q / N the parent's mean value, H the mean negative log-likelihood of the node's own step.
Of the terminal children of one expansion exactly one is backed up: a correct one, else the
most confident wrong one, else an incomplete one (lowest mean NLL of the whole trajectory
within the class). Its reward r (+1 correct, -1 wrong, `incomplete_reward` incomplete) goes
up its path with the depth weight gamma = max((depth + 1) / (leaf depth + 1), floor) and the
sign-constrained update of `signed_update`; every node on the path gets one visit, each
fresh non-terminal child one visit and no value, unselected terminals nothing. A tree stops
once it has harvested `trajectories` terminals, when its frontier is empty, or after
`expansions` rounds.

The harvested trajectories become learner rows with DeepSearch's "Tree-GRPO" advantages
(`row_advantages`): every token of node j's step gets tanh(q_j), the terminal step its r,
minus the mean r of the tree's harvested trajectories (no division by a standard deviation);
`advantage` picks that rule or another (`ADVANTAGES`).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from jaxdistill import sampling
from jaxdistill.search import lm_expand

NO_NODE = -1
ROOT = 0


@dataclasses.dataclass(frozen=True)
class DeepSearchSettings:
  """Static settings of the search (built from the config's deepsearch section)."""

  trajectories: int  # n: terminals harvested per tree (learner rows per prompt)
  expansions: int  # expansion rounds at most per tree
  max_depth: int  # a node this many steps deep is terminal (d_max of the frontier score)
  frontier_q: float  # l1
  frontier_entropy: float  # l2
  frontier_depth: float  # l3
  backup_floor: float  # the depth weight's floor
  incomplete_reward: float  # r of a terminal that ended without an answer
  advantage: str  # the learner rows' advantage rule (`ADVANTAGES`)


@chex.dataclass(frozen=True)
class DeepTree:
  """B trees of N = 1 + expansions * width nodes (fields [B, N] unless noted)."""

  parent: jax.Array  # int32, NO_NODE for the root and unused nodes
  depth: jax.Array  # int32, 0 at the root
  q: jax.Array  # float32 cumulative backed-up value
  visits: jax.Array  # int32
  terminal: jax.Array  # bool
  expanded: jax.Array  # bool: its children were sampled
  outcome: jax.Array  # float32 r of a terminal (+1, -1, incomplete_reward), 0 otherwise
  task_reward: jax.Array  # float32 the task's reward of a terminal's answer
  step_nll: jax.Array  # float32 mean NLL (temperature 1) of the node's own step
  path_nll: jax.Array  # float32 summed NLL of the whole path's generated tokens
  path_tokens: jax.Array  # [B, N, P] int32 prompt + steps
  path_logprobs: jax.Array  # [B, N, P] float32 as sampled (the behaviour policy)
  path_length: jax.Array  # int32
  num_nodes: jax.Array  # [B] int32
  harvested: jax.Array  # [B, n] int32 terminal nodes backed up, in order (NO_NODE after)
  num_harvested: jax.Array  # [B] int32
  dive: jax.Array  # [B] int32 node the next round expands, NO_NODE: jump to the frontier
  done: jax.Array  # [B] bool
  generated: jax.Array  # [B] int32 tokens sampled


def signed_update(q, r, gamma):
  """DeepSearch's sign-constrained backup of reward r with weight gamma into a node's
  cumulative value q: accumulate when q and r agree in sign (or q is 0); a positive r
  overwrites a negative q (q = gamma * r); a negative r leaves a positive q unchanged (a node
  that was ever on a correct path never turns negative)."""
  agree = q * r >= 0
  return jnp.where(agree, q + gamma * r, jnp.where(r > 0, gamma * r, q))


def depth_weight(depth, leaf_depth, floor: float):
  """gamma of a node `depth` steps deep on the path of a terminal `leaf_depth` deep."""
  return jnp.maximum((depth + 1) / (leaf_depth + 1), floor)


def terminal_choice(terminal, correct, complete, trajectory_nll):
  """Index [] of the terminal child to back up, or NO_NODE: a correct one, else a complete
  wrong one, else an incomplete one; within the class the lowest trajectory mean NLL (the
  first on ties). Arguments are [K] over one expansion's children."""
  rank = jnp.where(correct, 2, jnp.where(complete, 1, 0)).astype(jnp.float32)
  # lexicographic: the class first, then confidence (NLL is finite and >= 0)
  score = jnp.where(terminal, rank * 1e6 - jnp.minimum(trajectory_nll, 1e5), -jnp.inf)
  return jnp.where(terminal.any(), jnp.argmax(score), NO_NODE).astype(jnp.int32)


def frontier_scores(tree, settings: DeepSearchSettings):
  """F [N] of one tree's nodes (-inf off the frontier: the root, terminals, expanded nodes
  and unused slots)."""
  nodes = jnp.arange(tree.parent.shape[-1])
  parent = jnp.maximum(tree.parent, 0)
  parent_q = jnp.where(tree.visits[parent] > 0,
                       tree.q[parent] / jnp.maximum(tree.visits[parent], 1), 0.0)
  score = (settings.frontier_q * jnp.tanh(parent_q) + settings.frontier_entropy * tree.step_nll
           + settings.frontier_depth * jnp.sqrt(tree.depth / settings.max_depth))
  frontier = ((nodes < tree.num_nodes) & (nodes != ROOT) & ~tree.terminal & ~tree.expanded)
  return jnp.where(frontier, score, -jnp.inf)


def backup(tree, leaf, r, settings: DeepSearchSettings):
  """One tree with r backed up from `leaf` to the root (a no-op for leaf NO_NODE)."""
  leaf_depth = tree.depth[jnp.maximum(leaf, 0)]

  def step(_, carry):
    q, visits, node = carry
    on = node >= 0
    at = jnp.maximum(node, 0)
    gamma = depth_weight(tree.depth[at], leaf_depth, settings.backup_floor)
    q = q.at[at].set(jnp.where(on, signed_update(q[at], r, gamma), q[at]))
    visits = visits.at[at].add(on.astype(visits.dtype))
    return q, visits, jnp.where(on, tree.parent[at], NO_NODE)

  q, visits, _ = jax.lax.fori_loop(0, settings.max_depth + 1, step,
                                   (tree.q, tree.visits, leaf))
  return tree.replace(q=q, visits=visits)


def init_tree(prompt_tokens, prompt_lengths, settings: DeepSearchSettings, width: int,
              path_width: int, pad_id: int) -> DeepTree:
  """B trees holding only their root (the prompt), whose first round expands the root."""
  batch = prompt_tokens.shape[0]
  n = 1 + settings.expansions * width
  lengths = prompt_lengths.astype(jnp.int32)
  if prompt_tokens.shape[1] > path_width:
    raise ValueError(f"prompts of {prompt_tokens.shape[1]} tokens exceed max_path_tokens="
                     f"{path_width}")
  nodes = lambda value, dtype: jnp.full((batch, n), value, dtype)
  path = jnp.full((batch, n, path_width), pad_id, jnp.int32)
  path = path.at[:, ROOT, :prompt_tokens.shape[1]].set(prompt_tokens.astype(jnp.int32))
  return DeepTree(
      parent=nodes(NO_NODE, jnp.int32), depth=nodes(0, jnp.int32), q=nodes(0.0, jnp.float32),
      visits=nodes(0, jnp.int32).at[:, ROOT].set(1), terminal=nodes(False, jnp.bool_),
      expanded=nodes(False, jnp.bool_), outcome=nodes(0.0, jnp.float32),
      task_reward=nodes(0.0, jnp.float32), step_nll=nodes(0.0, jnp.float32),
      path_nll=nodes(0.0, jnp.float32), path_tokens=path,
      path_logprobs=jnp.zeros((batch, n, path_width), jnp.float32),
      path_length=nodes(0, jnp.int32).at[:, ROOT].set(lengths),
      num_nodes=jnp.ones((batch,), jnp.int32),
      harvested=jnp.full((batch, settings.trajectories), NO_NODE, jnp.int32),
      num_harvested=jnp.zeros((batch,), jnp.int32), dive=jnp.full((batch,), ROOT, jnp.int32),
      done=jnp.zeros((batch,), bool), generated=jnp.zeros((batch,), jnp.int32))


def _select(tree, settings: DeepSearchSettings):
  """(node to expand [], whether there is one []) of one tree."""
  scores = frontier_scores(tree, settings)
  jump = jnp.argmax(scores).astype(jnp.int32)
  node = jnp.where(tree.dive >= 0, tree.dive, jump)
  return node, (tree.dive >= 0) | jnp.isfinite(scores[jump])


def _add_children(tree, node, active, children: dict, settings: DeepSearchSettings,
                  width: int):
  """One tree with `node`'s K children written (when active), the chosen terminal backed
  up and harvested, and the next round's node decided."""
  ids = tree.num_nodes + jnp.arange(width)
  ids = jnp.where(active, ids, tree.parent.shape[-1])  # out of range: dropped
  put = lambda array, values: array.at[ids].set(values, mode="drop")
  terminal = children["terminal"]
  choice = terminal_choice(terminal, children["correct"], children["complete"],
                           children["path_nll"] / jnp.maximum(children["generated"], 1))
  chosen = choice >= 0
  # fresh non-terminal children get a visit and no value; terminals only when backed up
  visits = jnp.where(terminal, 0, 1).astype(jnp.int32)
  tree = tree.replace(
      parent=put(tree.parent, node), depth=put(tree.depth, tree.depth[node] + 1),
      visits=put(tree.visits, visits), terminal=put(tree.terminal, terminal),
      outcome=put(tree.outcome, children["outcome"]),
      task_reward=put(tree.task_reward, children["task_reward"]),
      step_nll=put(tree.step_nll, children["step_nll"]),
      path_nll=put(tree.path_nll, children["path_nll"]),
      path_tokens=put(tree.path_tokens, children["path_tokens"]),
      path_logprobs=put(tree.path_logprobs, children["path_logprobs"]),
      path_length=put(tree.path_length, children["path_length"]),
      expanded=tree.expanded.at[node].set(tree.expanded[node] | active),
      num_nodes=tree.num_nodes + jnp.where(active, width, 0),
      generated=tree.generated + jnp.where(active, children["step_length"].sum(), 0))
  leaf = jnp.where(active & chosen, tree.num_nodes - width + jnp.maximum(choice, 0), NO_NODE)
  r = children["outcome"][jnp.maximum(choice, 0)]
  tree = backup(tree, leaf, r, settings)
  harvest = leaf >= 0
  slot = jnp.where(harvest, tree.num_harvested, settings.trajectories)
  harvested = tree.harvested.at[slot].set(leaf, mode="drop")
  count = tree.num_harvested + harvest.astype(jnp.int32)
  # no terminal child: dive into the first one; else jump (the first non-terminal child
  # when some are terminal would be the dive of the released code's `selection`, but a
  # terminal ends the dive there)
  dive = jnp.where(terminal.any(), NO_NODE, ids[0])
  return tree.replace(harvested=harvested, num_harvested=count,
                      dive=jnp.where(active, dive, tree.dive))


def search(model, lm: lm_expand.LMSearchSettings, settings: DeepSearchSettings, prompt_tokens,
           prompt_lengths, problems, keys, reward_fn, skip=None) -> DeepTree:
  """DeepSearch over reasoning steps for a batch of prompts (see the module docstring);
  reward_fn: the task's sparse reward (1 for a correct answer); skip [B] bool: prompts not
  searched (their trees stay a root, generating nothing)."""
  width = lm.num_children
  batch = prompt_tokens.shape[0]
  tree = init_tree(prompt_tokens, prompt_lengths, settings, width, lm.max_path_tokens,
                   lm.pad_id)
  if skip is not None:
    tree = tree.replace(done=tree.done | skip)
  prompt_length = prompt_lengths.astype(jnp.int32)
  problem = problems.astype(jnp.int32)
  rows = jnp.arange(batch)

  def round_(carry):
    tree, step = carry
    node, has = jax.vmap(_select, in_axes=(0, None))(tree, settings)
    active = ~tree.done & has
    depth = tree.depth[rows, node]
    parent = Paths(tokens=tree.path_tokens[rows, node], logprobs=tree.path_logprobs[rows, node],
                   length=tree.path_length[rows, node], prompt_length=prompt_length,
                   problem=problem)
    round_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    children = expand(model, lm, settings, parent, depth, round_keys, active, reward_fn)
    children["path_nll"] = tree.path_nll[rows, node][:, None] + children["step_nll_sum"]
    children["generated"] = (children["path_length"] - prompt_length[:, None])
    del children["step_nll_sum"]
    tree = jax.vmap(_add_children, in_axes=(0, 0, 0, 0, None, None))(
        tree, node, active, children, settings, width)
    done = tree.done | ~has | (tree.num_harvested >= settings.trajectories)
    return tree.replace(done=done), step + 1

  def go_on(carry):
    tree, step = carry
    return (step < settings.expansions) & ~tree.done.all()

  tree, _ = jax.lax.while_loop(go_on, round_, (tree, jnp.zeros((), jnp.int32)))
  return tree


@chex.dataclass(frozen=True)
class Paths:
  """The nodes one round expands, one per tree (rows [B])."""

  tokens: jax.Array  # [B, P] int32 prompt + steps
  logprobs: jax.Array  # [B, P] float32 as sampled
  length: jax.Array  # [B] int32
  prompt_length: jax.Array  # [B] int32
  problem: jax.Array  # [B] int32


def expand(model, lm: lm_expand.LMSearchSettings, settings: DeepSearchSettings, parent: Paths,
           depth, keys, active, reward_fn) -> dict:
  """The K children of each row's node, as [B, K, ...] arrays: their paths, whether each
  is terminal (an answer, a full path, or max_depth), complete (ended with EOS), correct,
  its outcome r and task reward, its step's summed and mean NLL at temperature 1."""
  batch, k = parent.tokens.shape[0], lm.num_children
  row_keys = sampling.split_per_row(keys, k)
  out = sampling.sample_continuations(
      model, parent.tokens, parent.length, row_keys, samples=k,
      max_new_tokens=lm.max_step_tokens, temperature=lm.temperature, top_p=1.0,
      stop_ids=(lm.eos_id,), pad_id=lm.pad_id,
      stop_string=lm.step_end_stop(model.config.vocab_size))
  repeat = lambda x: jnp.repeat(x, k, axis=0)
  steps = out.lengths
  path, length, ended = lm_expand.extend_path(lm, repeat(parent.tokens),
                                              repeat(parent.length), out.tokens, steps)
  logprobs = lm_expand.splice(repeat(parent.logprobs), repeat(parent.length),
                              out.sample_logprobs, steps)
  child_depth = repeat(depth) + 1
  full = length + lm.max_step_tokens > lm.max_path_tokens
  terminal = ended | full | (child_depth >= settings.max_depth)
  graded = terminal & repeat(active)
  task_reward = lm_expand.task_rewards(path, repeat(parent.prompt_length), length,
                                       repeat(parent.problem), reward_fn, rows=graded)
  correct = terminal & ended & (task_reward >= 1.0)
  outcome = jnp.where(correct, 1.0, jnp.where(ended, -1.0, settings.incomplete_reward))
  nll_sum = -(out.logprobs.sum(-1))  # temperature-1 log-probs of the sampled step
  shaped = lambda x: x.reshape((batch, k) + x.shape[1:])
  return {"path_tokens": shaped(path), "path_logprobs": shaped(logprobs),
          "path_length": shaped(length), "terminal": shaped(terminal),
          "complete": shaped(ended), "correct": shaped(correct),
          "outcome": shaped(jnp.where(terminal, outcome, 0.0)),
          "task_reward": shaped(jnp.where(terminal, task_reward, 0.0)),
          "step_nll": shaped(nll_sum / jnp.maximum(steps, 1)),
          "step_nll_sum": shaped(nll_sum), "step_length": shaped(steps)}


def node_values(tree) -> jax.Array:
  """The per-token reward of each node's step [.., N]: tanh(q), a terminal's own r."""
  return jnp.where(tree.terminal, tree.outcome, jnp.tanh(tree.q))


def row_advantages(tree, settings: DeepSearchSettings):
  """Learner rows of one tree: (leaf [n], valid [n], advantage per path position [n, P])
  by the rule `settings.advantage` (`ADVANTAGES`; target-aligned later: position t is
  token t). Each rule gives every token of node j's step a reward and subtracts the tree's
  baseline:
  - tree_grpo (the published rule): node_values(j) minus the mean r of the tree's harvested
    terminals. A tree with no solution has baseline -1 (or the incomplete r), so every
    token gets tanh(q) + 1 >= 0: its own failing paths pushed up.
  - outcome (the paper's Table 4 "outcome" row): the path's own r on every token, minus the
    same mean: 0 everywhere in a tree whose paths share one outcome (no solution).
  - node_mean: node_values(j) minus their mean over the tree's harvested tokens (each
    token its node's value): the node-level credit kept, and every tree's token-mean
    advantage exactly 0, so a tree without a solution gets no net push either way (its
    less wrong nodes up, its more wrong ones down)."""
  n = settings.trajectories
  valid = jnp.arange(n) < tree.num_harvested
  leaf = jnp.where(valid, tree.harvested, 0)
  values = node_values(tree)
  positions = jnp.arange(tree.path_tokens.shape[-1])

  def one(leaf):  # (each position's node value [P], whether it is a step token [P])
    def step(_, carry):
      value, inside, node = carry
      on = (node >= 0) & (node != ROOT)
      at = jnp.maximum(node, 0)
      start = tree.path_length[jnp.maximum(tree.parent[at], 0)]
      here = on & (positions >= start) & (positions < tree.path_length[at])
      return (jnp.where(here, values[at], value), inside | here,
              jnp.where(on, tree.parent[at], NO_NODE))
    value, inside, _ = jax.lax.fori_loop(
        0, settings.max_depth + 1, step,
        (jnp.zeros(positions.shape, values.dtype), jnp.zeros(positions.shape, bool), leaf))
    return value, inside

  value, inside = jax.vmap(one)(leaf)  # [n, P]
  inside = inside & valid[:, None]
  outcome = jnp.where(valid, tree.outcome[leaf], 0.0)
  reward, baseline = ADVANTAGES[settings.advantage](value, inside, outcome, valid)
  return leaf, valid, jnp.where(inside, reward - baseline, 0.0)


def _tree_grpo(value, inside, outcome, valid):
  return value, outcome.sum() / jnp.maximum(valid.sum(), 1)


def _outcome(value, inside, outcome, valid):
  return jnp.broadcast_to(outcome[:, None], value.shape), _tree_grpo(value, inside, outcome,
                                                                     valid)[1]


def _node_mean(value, inside, outcome, valid):
  return value, (value * inside).sum() / jnp.maximum(inside.sum(), 1)


# deepsearch.advantage: (node value [n, P], step tokens [n, P], outcome [n], valid [n]) ->
# (each token's reward [n, P], the tree's baseline []); a new rule joins by a function here
ADVANTAGES = {"tree_grpo": _tree_grpo, "outcome": _outcome, "node_mean": _node_mean}
