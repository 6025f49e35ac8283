"""The batched sampler: stop tokens, log-probs, values, compile-once, per-row randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.models import Qwen2Config, init_model
from jaxdistill.sampling import _generate_jit, generate

CONFIG = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def model():
  return init_model(CONFIG, seed=0)


def _prompts(batch=5, width=7, seed=0):
  rng = np.random.RandomState(seed)
  lengths = rng.randint(1, width + 1, batch).astype(np.int32)
  tokens = rng.randint(2, CONFIG.vocab_size, (batch, width)).astype(np.int32)
  tokens[np.arange(width)[None] >= lengths[:, None]] = 0
  return tokens, lengths


def _forward(model, tokens):
  """Jitted full forward; trailing right-padding cannot change earlier (causal) positions."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, jnp.asarray(tokens))


def test_logprobs_and_values_match_a_full_forward(model):
  tokens, lengths = _prompts()
  out = generate(model, tokens, lengths, jax.random.key(1), max_new_tokens=9, temperature=1.0,
                 with_values=True)
  width = tokens.shape[1] + 9
  sequences = np.zeros((tokens.shape[0], width), np.int32)
  for row in range(tokens.shape[0]):
    n = int(out.lengths[row])
    sequences[row, :lengths[row] + n] = np.concatenate(
        [tokens[row, :lengths[row]], np.asarray(out.tokens[row, :n])])
  full = _forward(model, sequences)
  logp_all = np.asarray(jax.nn.log_softmax(full.logits, -1))
  for row in range(tokens.shape[0]):
    n, start = int(out.lengths[row]), lengths[row] - 1  # logits at p predict token p + 1
    expected = np.take_along_axis(logp_all[row, start:start + n],
                                  sequences[row, start + 1:start + 1 + n, None], -1)[:, 0]
    np.testing.assert_allclose(np.asarray(out.logprobs[row, :n]), expected, atol=1e-5)
    # at temperature 1 without top-p the sampling distribution is the policy itself
    np.testing.assert_allclose(np.asarray(out.sample_logprobs[row, :n]), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.values[row, :n]),
                               np.asarray(full.values[row, start:start + n]), atol=1e-5)


def test_stop_tokens_end_rows_and_pad_after(model):
  tokens, lengths = _prompts(batch=16, seed=1)
  stop = (5, 6, 7, 8)
  out = generate(model, tokens, lengths, jax.random.key(2), max_new_tokens=20, temperature=1.5,
                 stop_ids=stop, pad_id=0)
  toks, n = np.asarray(out.tokens), np.asarray(out.lengths)
  assert np.asarray(out.finished).any()
  for row in range(16):
    body = toks[row, :n[row]]
    if out.finished[row]:
      assert body[-1] in stop and not np.isin(body[:-1], stop).any()
    else:
      assert n[row] == 20 and not np.isin(body, stop).any()
    assert (toks[row, n[row]:] == 0).all()
    assert (np.asarray(out.logprobs)[row, n[row]:] == 0).all()


def test_compiles_once_for_same_shapes(model):
  """Temperature and top-p values are traced; only switching the nucleus filter on (top_p
  < 1) compiles a second program, and values are left out unless asked for."""
  tokens, lengths = _prompts(seed=2)
  out = generate(model, tokens, lengths, jax.random.key(0), max_new_tokens=6, temperature=0.7)
  assert out.values is None
  generate(model, tokens, lengths, jax.random.key(0), max_new_tokens=6, top_p=0.8)
  size = _generate_jit._cache_size()
  for seed, temperature, top_p in [(1, 0.3, 0.9), (2, 1.0, 1.0), (3, 0.0, 0.5), (4, 0.5, 1.0)]:
    generate(model, *_prompts(seed=seed), jax.random.key(seed), max_new_tokens=6,
             temperature=temperature, top_p=top_p)
  assert _generate_jit._cache_size() == size


def test_rows_depend_only_on_their_own_key(model):
  tokens, lengths = _prompts(batch=6, seed=3)
  keys = jax.random.split(jax.random.key(7), 6)
  whole = generate(model, tokens, lengths, None, max_new_tokens=10, row_keys=keys)
  part = generate(model, tokens[2:5], lengths[2:5], None, max_new_tokens=10, row_keys=keys[2:5])
  np.testing.assert_array_equal(np.asarray(whole.tokens[2:5]), np.asarray(part.tokens))


def test_tiny_top_p_is_greedy_and_greedy_is_deterministic(model):
  tokens, lengths = _prompts(seed=4)
  greedy = generate(model, tokens, lengths, jax.random.key(0), max_new_tokens=8, temperature=0.0)
  nucleus = generate(model, tokens, lengths, jax.random.key(5), max_new_tokens=8,
                     temperature=1.0, top_p=1e-6)
  np.testing.assert_array_equal(np.asarray(greedy.tokens), np.asarray(nucleus.tokens))
  assert np.allclose(np.asarray(nucleus.sample_logprobs), 0.0, atol=1e-6)


def test_top_p_samples_only_from_the_nucleus(model):
  tokens, lengths = _prompts(batch=64, seed=5)
  out = generate(model, tokens, lengths, jax.random.key(9), max_new_tokens=1, temperature=1.0,
                 top_p=0.3)
  logits = _forward(model, tokens).logits
  nucleus_sizes = []
  for row in range(64):
    probs = np.asarray(jax.nn.softmax(logits[row, lengths[row] - 1]))
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    nucleus = set(order[before < 0.3].tolist())
    assert int(out.tokens[row, 0]) in nucleus
    nucleus_sizes.append(len(nucleus))
  assert max(nucleus_sizes) > 1  # the test exercised real sampling, not only argmax


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (1.0, 0.7)])
def test_sampled_frequencies_match_the_tempered_nucleus_distribution(temperature, top_p):
  """20,000 draws from fixed logits: every token's frequency is within 5 binomial standard
  deviations of softmax(logits / T) renormalised over the top-p nucleus, and tokens outside
  the nucleus never appear."""
  from jaxdistill.sampling import sample_tokens
  logits = jnp.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -jnp.inf, 1.5])
  draws = 20_000
  keys = jax.random.split(jax.random.key(3), draws)
  tokens, logp, sample_logp = jax.jit(sample_tokens)(
      keys, jnp.broadcast_to(logits, (draws, logits.size)), jnp.float32(temperature),
      jnp.float32(top_p))
  probs = np.asarray(jax.nn.softmax(logits / temperature))
  order = np.argsort(-probs)
  before = np.cumsum(probs[order]) - probs[order]
  expected = np.zeros_like(probs)
  nucleus = order[before < top_p]
  expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
  counts = np.bincount(np.asarray(tokens), minlength=logits.size) / draws
  sigma = np.sqrt(expected * (1 - expected) / draws)
  assert np.all(np.abs(counts - expected) <= 5 * sigma + 1e-12), (counts, expected)
  assert (counts[expected == 0] == 0).all() and counts[6] == 0  # -inf logit never drawn
  # returned log-probs: temperature 1 and the sampling distribution, at the drawn token
  np.testing.assert_allclose(np.asarray(logp),
                             np.asarray(jax.nn.log_softmax(logits))[np.asarray(tokens)],
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sample_logp),
                             np.log(expected[np.asarray(tokens)]), rtol=1e-4, atol=1e-5)


def test_shared_prompt_samples_equal_samples_of_repeated_prompts(model):
  """samples=k prefills each prompt once and its k rows share that KV cache: the same
  tokens and log-probs as k copies of the prompt with the same row keys."""
  tokens, lengths = _prompts(batch=4, seed=6)
  k = 3
  keys = jax.random.split(jax.random.key(11), 4 * k)
  shared = generate(model, tokens, lengths, None, max_new_tokens=8, row_keys=keys, samples=k,
                    temperature=1.0, stop_ids=(5,), pad_id=0)
  copies = generate(model, np.repeat(tokens, k, 0), np.repeat(lengths, k, 0), None,
                    max_new_tokens=8, row_keys=keys, temperature=1.0, stop_ids=(5,), pad_id=0)
  np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(copies.tokens))
  np.testing.assert_array_equal(np.asarray(shared.lengths), np.asarray(copies.lengths))
  np.testing.assert_allclose(np.asarray(shared.logprobs), np.asarray(copies.logprobs),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(shared.prompt_value), np.asarray(copies.prompt_value),
                             atol=1e-6)
  assert len(set(map(tuple, np.asarray(shared.tokens)[:k]))) > 1  # the k samples differ
