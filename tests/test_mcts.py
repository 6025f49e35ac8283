"""The batched pUCT search: equal to mctx.search with one agent; invariants; agents."""

import functools

import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdistill import parallel
from jaxdistill.search import mcts
from jaxdistill.search.tree import ExpandOutput, RootOutput

K = 4


class HashEnv:
  """Deterministic synthetic tree: a node's prior, value, reward and terminal flag are
  hashes of its path, so our search and mctx.search see exactly the same environment."""

  def __init__(self, seed, discount=1.0, reward_scale=0.0, terminal_prob=0.0):
    self.base = jax.random.key(seed)
    self.discount, self.reward_scale, self.terminal_prob = discount, reward_scale, terminal_prob

  def evaluate(self, state):
    keys = jax.vmap(lambda s: jax.random.fold_in(self.base, s))(state)
    draw = lambda i, f: jax.vmap(lambda k: f(jax.random.fold_in(k, i)))(keys)
    logits = draw(0, lambda k: 2.0 * jax.random.normal(k, (K,)))
    value = draw(1, lambda k: jax.random.uniform(k, (), minval=-1.0, maxval=1.0))
    reward = self.reward_scale * draw(2, lambda k: jax.random.uniform(k, ()))
    terminal = draw(3, lambda k: jax.random.uniform(k, ())) < self.terminal_prob
    return logits, value, reward, terminal

  def child_state(self, state, action):
    return (state * jnp.uint32(K + 1) + action.astype(jnp.uint32) + 1).astype(jnp.uint32)

  def root(self, batch):
    state = jnp.arange(batch, dtype=jnp.uint32) + 1000
    logits, value, _, _ = self.evaluate(state)
    return RootOutput(prior_logits=logits, value=value, embedding=state)

  def expand_fn(self, keys, state, action):
    del keys
    state = self.child_state(state, action)
    logits, value, reward, terminal = self.evaluate(state)
    return ExpandOutput(prior_logits=logits, value=value, reward=reward, terminal=terminal,
                        discount=jnp.full(value.shape, self.discount)), state

  def recurrent_fn(self, params, rng, action, state):
    del params, rng
    state = self.child_state(state, action)
    logits, value, reward, _ = self.evaluate(state)
    return mctx.RecurrentFnOutput(reward=reward, discount=jnp.full(value.shape, self.discount),
                                  prior_logits=logits, value=value), state


def _raw_q(first_play_value):
  def qtransform(tree, node_index):
    q = tree.qvalues(node_index)
    return jnp.where(tree.children_visits[node_index] > 0, q, first_play_value)
  return qtransform


def _mctx_tree(env, batch, simulations, c_puct, first_play_value):
  selection = functools.partial(mctx.muzero_action_selection, pb_c_init=c_puct,
                                pb_c_base=1e30, qtransform=_raw_q(first_play_value))
  root = env.root(batch)
  root_selection = lambda key, tree, node: selection(key, tree, node, 0)
  return mctx.search(params=(), rng_key=jax.random.key(0),
                     root=mctx.RootFnOutput(prior_logits=root.prior_logits, value=root.value,
                                            embedding=root.embedding),
                     recurrent_fn=env.recurrent_fn, root_action_selection_fn=root_selection,
                     interior_action_selection_fn=selection, num_simulations=simulations)


def _search(env, batch, iterations, agents=1, **kwargs):
  keys = jax.random.split(jax.random.key(1), batch)
  return jax.jit(lambda r, k: mcts.search(r, env.expand_fn, k, num_iterations=iterations,
                                          num_agents=agents, **kwargs))(env.root(batch), keys)


@pytest.mark.parametrize("env,c_puct,fpv", [
    (HashEnv(0), 0.5, 0.0),
    (HashEnv(1, discount=0.9, reward_scale=0.3), 1.25, -0.2),
])
def test_one_agent_visits_the_same_nodes_as_mctx(env, c_puct, fpv):
  batch, sims = 6, 40
  theirs = _mctx_tree(env, batch, sims, c_puct, fpv)
  ours = _search(env, batch, sims, c_puct=c_puct, first_play_value=fpv)
  tree = ours.tree
  np.testing.assert_array_equal(tree.visit_count, theirs.node_visits)
  np.testing.assert_array_equal(tree.parent, theirs.parents)
  np.testing.assert_array_equal(tree.action_from_parent, theirs.action_from_parent)
  np.testing.assert_array_equal(tree.children, theirs.children_index)
  np.testing.assert_allclose(tree.value_sum / np.maximum(tree.visit_count, 1),
                             theirs.node_values, atol=1e-5)
  # the most-visited path, read off mctx's tree
  for b in range(batch):
    node, path = 0, []
    while True:
      children = np.asarray(theirs.children_index[b, node])
      visits = np.where(children >= 0, np.asarray(theirs.node_visits[b])[children], 0)
      if visits.max() == 0:
        break
      node = int(children[np.argmax(visits)])
      path.append(node)
    assert int(ours.path_length[b]) == len(path) > 1
    np.testing.assert_array_equal(ours.path_nodes[b, :len(path)], path)
    np.testing.assert_array_equal(ours.path_visits[b, :len(path)],
                                  np.asarray(theirs.node_visits[b])[path])


def _check_invariants(out, iterations, agents):
  tree = jax.device_get(out.tree)
  batch, capacity = tree.parent.shape
  for array in (tree.parent, tree.children, tree.action_from_parent):
    assert array.min() >= -1 and array.max() < capacity
  assert (tree.num_nodes <= capacity).all()
  np.testing.assert_array_equal(tree.visit_count[:, 0], iterations * agents + 1)
  assert (tree.pending == 0).all()
  for b in range(batch):
    used = tree.num_nodes[b]
    assert tree.expanded[b, :used].all() and not tree.expanded[b, used:].any()
    extra_leaf_visits = 0
    for node in range(used):
      children = tree.children[b, node]
      child_sum = tree.visit_count[b, children[children >= 0]].sum()
      if tree.terminal[b, node]:
        assert (children == -1).all()  # terminal nodes are never expanded
        continue
      assert tree.visit_count[b, node] >= 1 + child_sum
      extra_leaf_visits += tree.visit_count[b, node] - 1 - child_sum
      for a, child in enumerate(children):
        if child >= 0:
          assert tree.parent[b, child] == node and tree.action_from_parent[b, child] == a
          assert tree.depth[b, child] == tree.depth[b, node] + 1
    # a non-terminal node gets visits beyond its own expansion only from collisions (a
    # collision on a node that turned out terminal counts as a terminal revisit)
    terminal_revisits = (tree.visit_count[b] * tree.terminal[b]).sum() - tree.terminal[b].sum()
    assert extra_leaf_visits <= int(out.collisions[b])
    if not tree.terminal[b].any():
      assert extra_leaf_visits == int(out.collisions[b])
    # every simulation expanded a node, shared a new node, or ended on a terminal node
    assert int(out.num_expanded[b]) + extra_leaf_visits + terminal_revisits == (
        iterations * agents)


@pytest.mark.parametrize("agents,virtual_loss", [(1, "visit"), (4, "visit"), (16, "visit"),
                                                 (4, "value")])
def test_invariants_on_random_trees(agents, virtual_loss):
  env = HashEnv(2, discount=0.95, reward_scale=0.1, terminal_prob=0.25)
  iterations = 12
  out = _search(env, 5, iterations, agents, virtual_loss=virtual_loss)
  _check_invariants(out, iterations, agents)
  assert out.tree.terminal.any()  # the environment exercised terminal nodes
  if agents == 1:
    assert (out.collisions == 0).all()


# bit for bit: the programs agree when LLVM optimises their kernels; compiled without that
# (tests/conftest.py), a few node values differ in the last bit (measured: 2 of 65, 2.4e-7)
@pytest.mark.optimized
@pytest.mark.parametrize("agents,virtual_loss", [(1, "visit"), (4, "value")])
def test_loop_unroll_changes_nothing(agents, virtual_loss):
  """Walking several tree levels per loop iteration (fewer GPU round trips) gives the same
  trees as walking one: unrolled steps past the end of a walk are masked."""
  env = HashEnv(2, discount=0.95, reward_scale=0.1, terminal_prob=0.25)
  outs = [jax.device_get(_search(env, 5, 12, agents, virtual_loss=virtual_loss,
                                 loop_unroll=unroll)) for unroll in (1, 3, 4)]
  for out in outs[1:]:
    jax.tree.map(np.testing.assert_array_equal, out, outs[0])


def test_collisions_are_counted_and_share_one_expansion():
  """Very peaked priors and a tiny c_puct send agents down the same edge."""
  env = HashEnv(3)
  root = env.root(2)
  root = root.replace(prior_logits=root.prior_logits.at[:, 0].set(50.0))
  out = jax.jit(lambda r, k: mcts.search(r, env.expand_fn, k, num_iterations=3, num_agents=8,
                                         c_puct=5.0))(root, jax.random.split(jax.random.key(0), 2))
  assert (out.collisions > 0).all()
  _check_invariants(out, 3, 8)


def test_agents_cut_sequential_expansion_calls():
  calls = []
  env = HashEnv(4)

  def counting_expand(keys, state, action):
    jax.debug.callback(lambda: calls.append(1))
    return env.expand_fn(keys, state, action)

  def run(iterations, agents):
    calls.clear()
    out = jax.jit(lambda r, k: mcts.search(r, counting_expand, k, num_iterations=iterations,
                                           num_agents=agents))(env.root(3),
                                                               jax.random.split(jax.random.key(0), 3))
    jax.block_until_ready(out)
    jax.effects_barrier()
    return len(calls), out

  sequential, single = run(64, 1)
  parallel, many = run(4, 16)
  assert sequential == 64 and parallel == 4  # 16x fewer calls for the same 64 simulations
  np.testing.assert_array_equal(single.tree.visit_count[:, 0], 65)
  np.testing.assert_array_equal(many.tree.visit_count[:, 0], 65)


def test_bad_arguments():
  env = HashEnv(0)
  with pytest.raises(ValueError, match="loop_unroll"):
    mcts.search(env.root(1), env.expand_fn, jax.random.split(jax.random.key(0), 1),
                num_iterations=2, loop_unroll=0)
  with pytest.raises(ValueError, match="virtual_loss"):
    mcts.search(env.root(1), env.expand_fn, jax.random.split(jax.random.key(0), 1),
                num_iterations=2, virtual_loss="none")


def test_sharded_search_equals_unsharded_and_has_no_collectives():
  env = HashEnv(5, terminal_prob=0.1)
  batch = 16
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  keys = jax.random.split(jax.random.key(3), batch)
  run = lambda r, k: mcts.search(r, env.expand_fn, k, num_iterations=6, num_agents=4)
  sharded = jax.jit(parallel.shard_map(run, mesh, in_specs=P("data"), out_specs=P("data")))
  root = jax.device_put(env.root(batch), NamedSharding(mesh, P("data")))
  keys_sharded = jax.device_put(keys, NamedSharding(mesh, P("data")))
  hlo = sharded.lower(root, keys_sharded).compile().as_text()
  for collective in ("all-reduce", "all-gather", "collective-permute", "all-to-all",
                     "reduce-scatter"):
    assert collective not in hlo
  ours = sharded(root, keys_sharded)
  reference = jax.jit(run)(env.root(batch), keys)
  np.testing.assert_array_equal(ours.tree.visit_count, reference.tree.visit_count)
  np.testing.assert_array_equal(ours.path_nodes, reference.path_nodes)


def test_gumbel_root_selection_matches_mctx():
  """Gumbel + Sequential Halving at the root, pUCT inside: same visits as mctx.search."""
  env, batch, sims, considered = HashEnv(6, discount=0.9, reward_scale=0.2), 5, 24, 2
  noise = jax.random.gumbel(jax.random.key(9), (batch, K))
  root = env.root(batch)
  interior = functools.partial(mctx.muzero_action_selection, pb_c_init=0.5, pb_c_base=1e30,
                               qtransform=_raw_q(0.0))
  root_selection = functools.partial(mctx.gumbel_muzero_root_action_selection,
                                     num_simulations=sims, max_num_considered_actions=considered,
                                     qtransform=mctx.qtransform_completed_by_mix_value)
  theirs = mctx.search(params=(), rng_key=jax.random.key(0),
                       root=mctx.RootFnOutput(prior_logits=root.prior_logits, value=root.value,
                                              embedding=root.embedding),
                       recurrent_fn=env.recurrent_fn, root_action_selection_fn=root_selection,
                       interior_action_selection_fn=interior, num_simulations=sims,
                       extra_data=mctx.GumbelMuZeroExtraData(root_gumbel=noise))
  ours = jax.jit(lambda r, k: mcts.search(
      r, env.expand_fn, k, num_iterations=sims, root_selection="gumbel",
      max_num_considered_actions=considered, root_gumbel=noise))(
          root, jax.random.split(jax.random.key(0), batch))
  np.testing.assert_array_equal(ours.tree.visit_count, theirs.node_visits)
  np.testing.assert_array_equal(ours.tree.children, theirs.children_index)
  # the recommended root action is mctx.gumbel_muzero_policy's rule on the same tree
  visits = np.asarray(jax.vmap(lambda tree: tree.child_visits(0))(ours.tree))
  assert (visits[np.arange(batch), ours.path_actions[:, 0]] == visits.max(-1)).all()
  # halving: only `considered` root actions were ever visited
  assert ((visits > 0).sum(-1) <= considered).all()


def test_gumbel_with_agents_keeps_invariants():
  env = HashEnv(7, terminal_prob=0.2)
  out = _search(env, 4, 8, 4, root_selection="gumbel", max_num_considered_actions=4)
  _check_invariants(out, 8, 4)
