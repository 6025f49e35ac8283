"""Trees worth their tokens and training on them: duplicate children merged, rollouts to the
end, and learner trajectories with advantages taken from the whole tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from jaxdistill.models import init_model
from jaxdistill.search import lm_expand, mcts, targets
from jaxdistill.search.tree import NO_NODE, Tree

from test_lm_expand import CONFIG, EOS, MODEL, STEP_END, _prompts, fake_reward
from test_mcts import _check_invariants


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_dedup_never_merges_different_steps_and_conserves_prior_mass(data):
  k, steps = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
  vocab = data.draw(st.integers(2, 4))  # few token values: duplicates are frequent
  lengths = np.array(data.draw(st.lists(st.integers(1, steps), min_size=k, max_size=k)))
  tokens = np.array(data.draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=steps,
                                                max_size=steps), min_size=k, max_size=k)))
  tokens[np.arange(steps)[None] >= lengths[:, None]] = data.draw(st.integers(0, vocab - 1))
  prior = np.array(data.draw(st.lists(st.floats(-20, 5), min_size=k, max_size=k)), np.float32)
  merged = np.asarray(lm_expand.merge_duplicate_children(
      jnp.asarray(tokens)[None], jnp.asarray(lengths)[None], jnp.asarray(prior)[None]))[0]
  steps_of = [tuple(tokens[i, :lengths[i]]) for i in range(k)]
  for i in range(k):
    first = steps_of.index(steps_of[i])
    if first < i:  # a later copy: never selectable
      assert np.isneginf(merged[i])
    else:  # the first occurrence holds the mass of all its copies, and only theirs
      copies = [j for j in range(k) if steps_of[j] == steps_of[i]]
      np.testing.assert_allclose(merged[i], np.log(np.exp(prior[copies].astype(np.float64))
                                                   .sum()), rtol=1e-5, atol=1e-5)
  # total probability mass is conserved
  np.testing.assert_allclose(jax.nn.logsumexp(merged), jax.nn.logsumexp(prior), rtol=1e-5,
                             atol=1e-5)


def _rollout_search(iterations, agents, rollout=True, dedup=True):
  config = CONFIG.__class__(**{**CONFIG.__dict__, "rollout_to_end": rollout,
                               "dedup_children": dedup, "max_rollout_tokens": 10})
  model = init_model(MODEL, seed=3)
  graphdef, params = nnx.split(model)
  tokens, lengths = _prompts(4)
  keys = jax.random.split(jax.random.key(0), 4)

  def run(params, tokens, lengths, keys):
    root = lm_expand.root_output(nnx.merge(graphdef, params), config, tokens, lengths,
                                 jnp.arange(4), keys, fake_reward)
    expand = lm_expand.make_expand_fn(graphdef, params, config, fake_reward)
    return mcts.search(root, expand, keys, num_iterations=iterations, num_agents=agents,
                       c_puct=2.0)

  return config, jax.device_get(jax.jit(run)(params, tokens, lengths, keys))


@pytest.mark.parametrize("agents", [1, 3])
def test_rollout_to_end_keeps_the_kernel_invariants(agents):
  iterations = 4
  config, out = _rollout_search(iterations, agents)
  _check_invariants(out, iterations, agents)
  tree, emb = out.tree, out.tree.embeddings
  evaluated = tree.expanded & ~tree.terminal
  assert evaluated.sum() >= 4
  for b, node in zip(*np.nonzero(evaluated)):
    rollouts = []
    for k in range(config.num_children):
      n = emb.rollout_lengths[b, node, k]
      rollout = emb.rollout_tokens[b, node, k, :n]
      step = emb.candidate_tokens[b, node, k, :emb.candidate_lengths[b, node, k]]
      # the candidate step is the rollout up to its first step end (or EOS, or L tokens)
      np.testing.assert_array_equal(rollout[:len(step)], step)
      assert (len(step) == config.max_step_tokens or step[-1] in (EOS, STEP_END)
              or len(step) == n)
      assert not np.isin(step[:-1], (EOS, STEP_END)).any()
      # a rollout stops at EOS only (or at its cap)
      assert rollout[-1] == EOS or n == config.max_rollout_tokens
      assert not (rollout[:-1] == EOS).any()
      path = emb.path_tokens[b, node, emb.prompt_length[b, node]:emb.path_length[b, node]]
      reward = fake_reward(np.concatenate([path, rollout]), b)
      assert emb.rollout_rewards[b, node, k] == pytest.approx(reward)
      rollouts.append(reward)
    # the node's value is the mean reward of its rollouts, not the value head
    assert tree.raw_value[b, node] == pytest.approx(np.mean(rollouts), abs=1e-6)
    valid = ~np.isneginf(tree.prior_logits[b, node])
    assert valid.any() and not (tree.children[b, node][~valid] >= 0).any()


def _hand_tree():
  """One tree: root(0) -> 1 -> 3 (terminal), root -> 2 (terminal). Paths of 3 + steps."""
  n, k = 5, 2
  parent = np.array([NO_NODE, 0, 0, 1, NO_NODE])
  depth = np.array([0, 1, 1, 2, 0])
  visits = np.array([4, 2, 1, 1, 0])
  value_sum = np.array([0.4, 1.0, -0.5, 0.6, 0.0])  # V: 0.1, 0.5, -0.5, 0.6
  terminal = np.array([False, False, True, True, False])
  expanded = np.array([True, True, True, True, False])
  path_length = np.array([3, 5, 4, 8, 0])  # prompt of 3; steps of 2, 1 and 3 tokens
  tokens = np.zeros((n, 10), np.int32)
  for node in range(4):
    tokens[node, :path_length[node]] = np.arange(1, path_length[node] + 1) + 10 * node
  embeddings = lm_expand.NodeState(
      path_tokens=tokens, path_length=path_length, prompt_length=np.full(n, 3),
      problem=np.zeros(n, np.int32), candidate_tokens=np.zeros((n, k, 3), np.int32),
      candidate_lengths=np.zeros((n, k), np.int32), candidate_logprobs=np.zeros((n, k)),
      rollout_tokens=np.zeros((n, k, 0), np.int32), rollout_lengths=np.zeros((n, k), np.int32),
      rollout_rewards=np.zeros((n, k)))
  children = np.full((n, k), NO_NODE)
  children[0] = [1, 2]
  children[1, 0] = 3
  b = lambda x: jnp.asarray(x)[None]
  return Tree(parent=b(parent), action_from_parent=b(np.array([-1, 0, 1, 0, -1])),
              depth=b(depth), visit_count=b(visits), value_sum=b(value_sum),
              raw_value=b(np.array([0.0, 0.2, -0.5, 0.6, 0.0])), reward=b(np.zeros(n)),
              discount=b(np.ones(n)), pending=b(np.zeros(n, np.int32)), terminal=b(terminal),
              expanded=b(expanded), children=b(children), prior_logits=b(np.zeros((n, k))),
              embeddings=jax.tree.map(b, embeddings), num_nodes=b(4))


def test_step_advantages_on_a_hand_built_tree():
  tree = _hand_tree()
  rows = targets.tree_rows(tree, max_rows=3, rollout_to_end=False, pad_id=0)
  np.testing.assert_array_equal(rows.node, [2, 3, 0])  # terminal nodes first, in node order
  np.testing.assert_array_equal(rows.valid, [True, True, False])
  np.testing.assert_allclose(rows.reward, [-0.5, 0.6, 0.0])
  step = np.asarray(targets.step_advantages(tree, rows))
  # node 2: prompt (0, 0, 0), then its one-token step: V(2) - V(root) = -0.5 - 0.1
  np.testing.assert_allclose(step[0, :5], [0, 0, 0, -0.6, 0])
  # node 3: the step into 1 (2 tokens): 0.5 - 0.1; the step into 3 (3 tokens): 0.6 - 0.5
  np.testing.assert_allclose(step[1, :9], [0, 0, 0, 0.4, 0.4, 0.1, 0.1, 0.1, 0], atol=1e-6)
  assert (step[2] == 0).all()  # an unused row
  # global: rewards standardised over the tree's valid rows (-0.5, 0.6 -> -1, +1)
  np.testing.assert_allclose(targets.global_advantages(rows, 3), [-1, 1, 0], atol=1e-5)
  aligned = np.asarray(targets.token_advantages(tree, rows, 3, step=True))
  np.testing.assert_allclose(aligned[1, 2:8], 1 + np.array([0.4, 0.4, 0.1, 0.1, 0.1, 0]),
                             atol=1e-5)  # entry t is about token t + 1


def test_rollout_rows_take_every_rollout_with_its_reward():
  config, out = _rollout_search(3, 2)
  tree, emb = out.tree, out.tree.embeddings
  rows = jax.device_get(targets.tree_rows(tree, 8, rollout_to_end=True, pad_id=0))
  k = config.num_children
  for i in np.nonzero(rows.valid)[0]:
    b, node = rows.tree[i], rows.node[i]
    choice = [j for j in range(k) if emb.rollout_rewards[b, node, j] == rows.reward[i]]
    assert choice, "the row's reward is one of its node's rollouts'"
    generated = rows.tokens[i, rows.prompt_length[i]:rows.length[i]]
    path = emb.path_tokens[b, node, emb.prompt_length[b, node]:emb.path_length[b, node]]
    np.testing.assert_array_equal(generated[:len(path)], path)
    assert rows.reward[i] == pytest.approx(fake_reward(generated, b))
  # rows of a tree come from its evaluated nodes in order, K rollouts each, up to the cap
  evaluated = (tree.expanded & ~tree.terminal).sum(-1)
  np.testing.assert_array_equal(rows.valid.reshape(4, 8).sum(-1), np.minimum(evaluated * k, 8))
