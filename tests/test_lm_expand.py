"""The LM-backed expansion: paths, values, priors, terminal rewards, device invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from settings_for_tests import lm_search_config
from jaxdistill import parallel
from jaxdistill.models import Qwen2Config, init_model
from jaxdistill.search import lm_expand, mcts

VOCAB, EOS, STEP_END, PAD = 24, 1, 2, 0
CONFIG = lm_search_config(num_children=3, max_step_tokens=6, max_path_tokens=26,
                          temperature=1.0, step_end_id=STEP_END, eos_id=EOS, pad_id=PAD)
MODEL = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)


def fake_reward(tokens, problem):
  """Deterministic in the generated tokens (so the test can recompute it)."""
  return float((int(np.sum(tokens)) * 7 + problem) % 11) / 10.0 - 0.5


def _prompts(batch, width=6, seed=0):
  rng = np.random.RandomState(seed)
  lengths = rng.randint(2, width + 1, batch).astype(np.int32)
  tokens = rng.randint(3, VOCAB, (batch, width)).astype(np.int32)
  tokens[np.arange(width)[None] >= lengths[:, None]] = PAD
  return jnp.asarray(tokens), jnp.asarray(lengths)


def _run(graphdef, params, tokens, lengths, keys, iterations=5, agents=2):
  root_keys = jax.vmap(lambda k: jax.random.fold_in(k, 10_000))(keys)
  root = lm_expand.root_output(nnx.merge(graphdef, params), CONFIG, tokens, lengths,
                               jnp.arange(tokens.shape[0]), root_keys, fake_reward)
  expand = lm_expand.make_expand_fn(graphdef, params, CONFIG, fake_reward)
  return mcts.search(root, expand, keys, num_iterations=iterations, num_agents=agents,
                     c_puct=2.0)


@pytest.fixture(scope="module")
def searched():
  model = init_model(MODEL, seed=3)
  graphdef, params = nnx.split(model)
  tokens, lengths = _prompts(4)
  keys = jax.random.split(jax.random.key(0), 4)
  out = jax.jit(_run, static_argnums=0)(graphdef, params, tokens, lengths, keys)
  return model, jax.device_get(out), np.asarray(lengths)


def test_paths_are_parent_path_plus_chosen_candidate(searched):
  _, out, lengths = searched
  tree, emb = out.tree, out.tree.embeddings
  checked = 0
  for b in range(tree.parent.shape[0]):
    for node in range(1, tree.num_nodes[b]):
      parent, action = tree.parent[b, node], tree.action_from_parent[b, node]
      start, step_len = emb.path_length[b, parent], emb.candidate_lengths[b, parent, action]
      expected = np.concatenate([emb.path_tokens[b, parent, :start],
                                 emb.candidate_tokens[b, parent, action, :step_len]])
      n = emb.path_length[b, node]
      assert n == min(len(expected), CONFIG.max_path_tokens)
      np.testing.assert_array_equal(emb.path_tokens[b, node, :n], expected[:n])
      assert emb.prompt_length[b, node] == lengths[b]
      checked += 1
  assert checked >= 8


def test_terminal_nodes_carry_the_task_reward_and_are_never_expanded(searched):
  _, out, _ = searched
  tree, emb = out.tree, out.tree.embeddings
  terminals = 0
  for b in range(tree.parent.shape[0]):
    for node in range(1, tree.num_nodes[b]):
      if not tree.terminal[b, node]:
        continue
      terminals += 1
      generated = emb.path_tokens[b, node, emb.prompt_length[b, node]:emb.path_length[b, node]]
      assert tree.raw_value[b, node] == pytest.approx(fake_reward(generated, b))
      assert (tree.children[b, node] == -1).all()
      ended_on_eos = generated[-1] == EOS
      no_room = emb.path_length[b, node] + CONFIG.max_step_tokens > CONFIG.max_path_tokens
      assert ended_on_eos or no_room
  assert terminals > 0


def test_values_and_priors_match_an_independent_forward(searched):
  model, out, _ = searched
  tree, emb = out.tree, out.tree.embeddings
  width = CONFIG.max_path_tokens + CONFIG.max_step_tokens
  cases, sequences = [], []
  for b in range(2):
    for node in range(min(4, tree.num_nodes[b])):
      if tree.terminal[b, node]:
        continue
      n = emb.path_length[b, node]
      for k in range(CONFIG.num_children):
        step = emb.candidate_tokens[b, node, k, :emb.candidate_lengths[b, node, k]]
        # a step stops at the first step-end or EOS
        assert not np.isin(step[:-1], (EOS, STEP_END)).any()
        sequence = np.concatenate([emb.path_tokens[b, node, :n], step])
        sequences.append(np.pad(sequence, (0, width - len(sequence))))  # causal: pad harmless
        cases.append((b, node, k, n, step))
  graphdef, state = nnx.split(model)
  full = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.asarray(np.stack(sequences)))
  logp = np.asarray(jax.nn.log_softmax(full.logits, -1))
  # the behaviour policy: each token at the sampling temperature, as it was drawn
  sampled = np.asarray(jax.nn.log_softmax(full.logits / CONFIG.temperature, -1))
  for row, (b, node, k, n, step) in enumerate(cases):
    assert tree.raw_value[b, node] == pytest.approx(float(full.values[row, n - 1]), abs=1e-5)
    expected = sum(float(logp[row, n - 1 + i, t]) for i, t in enumerate(step))
    assert tree.prior_logits[b, node, k] == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(emb.candidate_sample_logprobs[b, node, k, :len(step)],
                               [sampled[row, n - 1 + i, t] for i, t in enumerate(step)],
                               atol=1e-4)
  assert len(cases) >= 6
  # a node's path carries its steps' behaviour log-probs (its parent's, then the step's)
  for b in range(2):
    for node in range(1, tree.num_nodes[b]):
      parent, action = tree.parent[b, node], tree.action_from_parent[b, node]
      start, n = emb.path_length[b, parent], emb.path_length[b, node]
      np.testing.assert_array_equal(emb.path_logprobs[b, node, :start],
                                    emb.path_logprobs[b, parent, :start])
      np.testing.assert_array_equal(emb.path_logprobs[b, node, start:n],
                                    emb.candidate_sample_logprobs[b, parent, action, :n - start])
      assert (emb.path_logprobs[b, node, :emb.prompt_length[b, node]] == 0).all()


def test_eight_devices_give_token_identical_children():
  assert CONFIG.reuse_kv  # the search as it runs by default: its KV pool sharded with the trees
  model = init_model(MODEL, seed=4)
  graphdef, params = nnx.split(model)
  tokens, lengths = _prompts(8, seed=1)
  keys = jax.random.split(jax.random.key(5), 8)
  single = jax.jit(_run, static_argnums=(0, 5, 6))(graphdef, params, tokens, lengths, keys, 3, 2)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  run = lambda p, t, l, k: _run(graphdef, p, t, l, k, 3, 2)
  sharded = jax.jit(parallel.shard_map(run, mesh, in_specs=(P(), P("data"), P("data"), P("data")),
                                             out_specs=P("data")))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  many = sharded(params, put(tokens), put(lengths), put(keys))
  np.testing.assert_array_equal(many.tree.embeddings.candidate_tokens,
                                single.tree.embeddings.candidate_tokens)
  np.testing.assert_array_equal(many.tree.visit_count, single.tree.visit_count)
  np.testing.assert_array_equal(many.path_nodes, single.path_nodes)
