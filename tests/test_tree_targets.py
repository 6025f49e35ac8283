"""Trees worth their tokens and training on them: duplicate children merged, rollouts to the
end, entropy-guided branching, learner trajectories with advantages taken from the whole
tree, and AlphaZero visit targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from jaxdistill.models import init_model
from jaxdistill.rl import learner, losses
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


def _rollout_search(iterations, agents, rollout=True, dedup=True, branch_at="step",
                    with_model=False):
  config = CONFIG.__class__(**{**CONFIG.__dict__, "rollout_to_end": rollout,
                               "dedup_children": dedup, "max_rollout_tokens": 10,
                               "branch_at": branch_at})
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

  out = jax.device_get(jax.jit(run)(params, tokens, lengths, keys))
  return (config, out, graphdef, params) if with_model else (config, out)


_ENTROPY_WIDTH = 128  # >= any path + rollout here; one shape, so one compilation


@jax.jit
def _padded_entropies(graphdef, params, tokens):
  logits = nnx.merge(graphdef, params)(tokens[None]).logits[0]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -(jnp.exp(logp) * logp).sum(-1)


def _entropies(graphdef, params, tokens):
  """Entropy [S - 1] of the temperature-1 next-token distribution after each prefix (the
  model is causal: padding after the sequence leaves these unchanged)."""
  n = len(tokens)
  assert n <= _ENTROPY_WIDTH
  padded = np.zeros(_ENTROPY_WIDTH, np.int32)
  padded[:n] = tokens
  return np.asarray(_padded_entropies(graphdef, params, jnp.asarray(padded)))[:n - 1]


@pytest.mark.parametrize("agents,branch_at", [(1, "step"), (3, "step"), (3, "entropy")])
def test_rollout_to_end_keeps_the_kernel_invariants(agents, branch_at):
  iterations = 4
  config, out, graphdef, params = _rollout_search(iterations, agents, branch_at=branch_at,
                                                  with_model=True)
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
      np.testing.assert_array_equal(rollout[:len(step)], step)
      path = emb.path_tokens[b, node, :emb.path_length[b, node]]
      if branch_at == "step":
        # the candidate step is the rollout up to its first step end (or EOS, or L tokens)
        assert (len(step) == config.max_step_tokens or step[-1] in (EOS, STEP_END)
                or len(step) == n)
        assert not np.isin(step[:-1], (EOS, STEP_END)).any()
      elif n >= 2:
        # cut before the rollout's most uncertain token j, 1 <= j <= L (j < n: never EOS)
        assert 1 <= len(step) <= min(n - 1, config.max_step_tokens)
        entropy = _entropies(graphdef, params, np.concatenate([path, rollout]))[len(path) - 1:]
        eligible = entropy[1:min(n - 1, config.max_step_tokens) + 1]
        assert entropy[len(step)] >= eligible.max() - 1e-4
      else:
        assert len(step) == 1
      # a rollout stops at EOS only (or at its cap)
      assert rollout[-1] == EOS or n == config.max_rollout_tokens
      assert not (rollout[:-1] == EOS).any()
      path = path[emb.prompt_length[b, node]:]
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
      path_tokens=tokens, path_logprobs=np.zeros((n, 10), np.float32),
      path_length=path_length, prompt_length=np.full(n, 3),
      problem=np.zeros(n, np.int32), candidate_tokens=np.zeros((n, k, 3), np.int32),
      candidate_lengths=np.zeros((n, k), np.int32), candidate_logprobs=np.zeros((n, k)),
      candidate_sample_logprobs=np.zeros((n, k, 3), np.float32),
      rollout_tokens=np.zeros((n, k, 0), np.int32), rollout_lengths=np.zeros((n, k), np.int32),
      rollout_rewards=np.zeros((n, k)), rollout_logprobs=np.zeros((n, k, 0), np.float32))
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


@pytest.mark.parametrize("dedup", [False, True])
def test_visit_targets_have_the_cross_entropy_gradient(dedup):
  """The visit rows' surrogate loss (CISPO at the behaviour policy) has the gradient of the
  cross-entropy between the visit distribution and the renormalised candidate log-probs."""
  config, out, graphdef, params = _rollout_search(6, 3, rollout=False, dedup=dedup,
                                                  with_model=True)
  depths, k = 3, config.num_children
  rows, advantages = jax.device_get(targets.visit_rows(out, config, depths))
  m, width = rows.tokens.shape
  assert (m, advantages.shape) == (4 * depths * k, (m, width - 1))  # static: [B * D * K]
  tree, emb = out.tree, out.tree.embeddings
  nodes = []  # (tree, node, rows of its candidates, visit distribution)
  for i in range(0, m, k):
    if not rows.valid[i:i + k].any():
      continue
    b, node = rows.tree[i], rows.node[i]
    assert node == 0 or out.path_nodes[b, i // k % depths - 1] == node  # the path's nodes
    children = tree.children[b, node]
    visits = np.where(children >= 0, tree.visit_count[b, np.maximum(children, 0)], 0)
    assert visits.sum() >= 2
    for j in range(k):  # row = node's path + candidate j; only the candidate is trained
      r = i + j
      if not rows.valid[r]:
        assert dedup and visits[j] == 0  # a merged duplicate
        continue
      start, n = emb.path_length[b, node], emb.candidate_lengths[b, node, j]
      assert rows.prompt_length[r] == start and rows.length[r] == start + n
      np.testing.assert_array_equal(rows.tokens[r, :start], emb.path_tokens[b, node, :start])
      np.testing.assert_array_equal(rows.tokens[r, start:start + n],
                                    emb.candidate_tokens[b, node, j, :n])
    nodes.append((i, visits / visits.sum()))
  assert len(nodes) >= 4
  traj_mask = ((np.arange(width - 1)[None] + 1 >= rows.prompt_length[:, None]) &
               (np.arange(width - 1)[None] + 1 < rows.length[:, None])).astype(np.float32)
  tokens = jnp.asarray(rows.tokens)
  old, _ = learner.sequence_logprobs(graphdef, params, tokens)

  def surrogate(params):  # what the learner minimises (per-row mean, then mean over rows)
    logp, _ = learner.sequence_logprobs(graphdef, params, tokens)
    return losses.cispo_loss(logp, old, advantages * traj_mask, traj_mask)

  def cross_entropy(params):  # summed over the nodes, divided like the surrogate
    logp, _ = learner.sequence_logprobs(graphdef, params, tokens)
    summed = (logp * traj_mask).sum(-1)
    total = 0.0
    for i, target in nodes:
      valid = rows.valid[i:i + k]
      s = jnp.where(valid, summed[i:i + k], -jnp.inf)
      total -= (target[valid] * jax.nn.log_softmax(s)[valid]).sum()
    return total / rows.valid.sum()

  got, want = jax.grad(surrogate)(params), jax.grad(cross_entropy)(params)
  norm = lambda t: float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(t))))
  assert norm(want) > 1e-4
  diff = jax.tree.map(lambda a, b: a - b, got, want)
  assert norm(diff) <= 1e-4 * norm(want)
