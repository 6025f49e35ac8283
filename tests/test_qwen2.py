"""The Flax Qwen2 model against transformers' PyTorch Qwen2ForCausalLM."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import Qwen2ForCausalLM

from jaxdistill.models import KVCache, from_pretrained, save_pretrained
from jaxdistill.sampling import generate


def _tokens(batch, length, vocab, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, (batch, length)).astype(np.int32)


def _torch_logits(model, tokens, attention_mask=None):
  kwargs = {}
  if attention_mask is not None:
    kwargs["attention_mask"] = torch.tensor(attention_mask)
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long), **kwargs).logits.numpy()


def test_logits_match_transformers(hf_checkpoint):
  path, reference = hf_checkpoint
  model = from_pretrained(path)
  tokens = _tokens(3, 17, model.config.vocab_size)
  out = model(jnp.asarray(tokens))
  assert out.logits.shape == (3, 17, model.config.vocab_size)
  assert out.values.shape == (3, 17)
  assert out.logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out.logits), _torch_logits(reference, tokens), atol=1e-4,
                             rtol=0)
  assert np.all(np.abs(np.asarray(out.values)) <= 1.0)


def test_config_read(hf_checkpoint):
  path, reference = hf_checkpoint
  config = from_pretrained(path).config
  assert config.tie_word_embeddings == reference.config.tie_word_embeddings
  assert config.rope_theta == reference.config.rope_parameters["rope_theta"]
  assert config.num_key_value_heads == reference.config.num_key_value_heads


def test_cached_decode_equals_full_forward(hf_checkpoint):
  path, _ = hf_checkpoint
  model = from_pretrained(path)
  tokens = jnp.asarray(_tokens(2, 12, model.config.vocab_size, seed=1))
  full = model(tokens)
  # prefill 5 tokens, then one token at a time
  out = model(tokens[:, :5], cache=KVCache.empty(model.config, 2, 12))
  logits, values, cache = [out.logits], [out.values], out.cache
  for t in range(5, 12):
    out = model(tokens[:, t:t + 1], cache=cache)
    logits.append(out.logits)
    values.append(out.values)
    cache = out.cache
  np.testing.assert_allclose(np.concatenate(logits, 1), full.logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.concatenate(values, 1), full.values, atol=1e-5, rtol=0)
  assert int(cache.end) == 12


def test_padded_batch_matches_transformers_masked_forward(gqa_checkpoint):
  """Left padding with an attention mask gives transformers' logits at real positions."""
  path, reference = gqa_checkpoint
  model = from_pretrained(path)
  tokens = _tokens(3, 10, model.config.vocab_size, seed=2)
  mask = np.ones_like(tokens)
  mask[0, :4] = 0
  mask[1, :1] = 0
  ours = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)).logits)
  theirs = _torch_logits(reference, tokens, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_generate(gqa_checkpoint):
  path, reference = gqa_checkpoint
  model = from_pretrained(path)
  lengths = np.array([3, 9, 6, 1], np.int32)
  prompts = _tokens(4, 9, model.config.vocab_size, seed=3)
  pad = 0
  right = np.where(np.arange(9)[None] < lengths[:, None], prompts, pad).astype(np.int32)
  out = generate(model, right, lengths, jax.random.key(0), max_new_tokens=32, temperature=0.0)
  assert out.tokens.shape == (4, 32)
  np.testing.assert_array_equal(np.asarray(out.lengths), 32)

  left = np.full_like(prompts, pad)
  mask = np.zeros_like(prompts)
  for row, n in enumerate(lengths):
    left[row, 9 - n:] = prompts[row, :n]
    mask[row, 9 - n:] = 1
  reference.generation_config.eos_token_id = None
  with torch.no_grad():
    expected = reference.generate(torch.tensor(left, dtype=torch.long),
                                  attention_mask=torch.tensor(mask), max_new_tokens=32,
                                  min_new_tokens=32, do_sample=False, pad_token_id=pad)
  np.testing.assert_array_equal(np.asarray(out.tokens), expected[:, 9:].numpy())


def test_round_trip_through_save_pretrained(hf_checkpoint, tmp_path):
  path, reference = hf_checkpoint
  model = from_pretrained(path)
  save_pretrained(model, str(tmp_path))
  reloaded = Qwen2ForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens = _tokens(2, 9, model.config.vocab_size, seed=4)
  np.testing.assert_array_equal(_torch_logits(reloaded, tokens), _torch_logits(reference, tokens))
  # the value head travels beside the HF weights
  again = from_pretrained(str(tmp_path), seed=123)
  np.testing.assert_array_equal(np.asarray(again(jnp.asarray(tokens)).values),
                                np.asarray(model(jnp.asarray(tokens)).values))


def test_bf16_compute_stays_close_and_fp32_masters_compute_as_bf16_weights(gqa_checkpoint):
  """bf16 compute is close to transformers' fp32 logits; fp32 master weights (the training
  default) compute exactly what the same weights stored in bf16 do, and stay fp32."""
  path, reference = gqa_checkpoint
  stored = from_pretrained(path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  master = from_pretrained(path, dtype=jnp.bfloat16)
  assert stored.embed_tokens.embedding.dtype == jnp.bfloat16
  assert master.embed_tokens.embedding.dtype == jnp.float32
  assert master.layers[0].input_layernorm.scale.dtype == jnp.float32
  tokens = _tokens(2, 8, stored.config.vocab_size, seed=5)
  out = master(jnp.asarray(tokens))
  logits = np.asarray(out.logits)
  assert logits.dtype == np.float32 and out.hidden.dtype == jnp.bfloat16
  np.testing.assert_array_equal(logits, np.asarray(stored(jnp.asarray(tokens)).logits))
  expected = _torch_logits(reference, tokens)
  # bf16 compute: a few percent of the logit scale, not exactness
  assert np.abs(logits - expected).max() < 0.05 * np.abs(expected).max() + 0.05


def _dots(fn, *args):
  """(operand types, precision) of every dot_general in fn's lowered StableHLO."""
  import re
  text = jax.jit(fn).lower(*args).as_text()
  dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
  assert dots
  found = []
  for line in dots:
    precision = re.search(r"precision = \[(\w+), (\w+)\]", line)
    operands = re.search(r": \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)", line)
    found.append((operands.groups() if operands else None,
                  precision.groups() if precision else ("DEFAULT", "DEFAULT")))
  return found


def test_fp32_matmuls_run_at_highest_precision_and_bf16_stays_native():
  """fp32 means fp32 on every backend: each dot of the fp32 forward, cached decode step and
  gradient asks for HIGHEST precision (GPUs would run DEFAULT as TF32). A bf16 body keeps
  DEFAULT (native bf16) dots; only the fp32 value head runs at HIGHEST."""
  from flax import nnx

  from jaxdistill.models import Qwen2Config, init_model
  config = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
  tokens = jnp.zeros((2, 5), jnp.int32)
  for dtype in (jnp.float32, jnp.bfloat16):
    graphdef, state = nnx.split(init_model(config, dtype=dtype))

    def forward(state, tokens):
      out = nnx.merge(graphdef, state)(tokens)
      return out.logits.sum() + out.values.sum()

    def decode_step(state, tokens):
      model = nnx.merge(graphdef, state)
      cache = KVCache.empty(config, 2, 8, dtype)
      return model(tokens[:, :1], cache=model(tokens, cache=cache).cache).logits

    forward_dots = _dots(forward, state, tokens) + _dots(decode_step, state, tokens)
    if dtype == jnp.float32:
      for _, precision in forward_dots + _dots(jax.grad(forward), state, tokens):
        assert precision == ("HIGHEST", "HIGHEST")
    else:  # bf16 body dots stay native; the fp32 value head is fp32 (its f32 x f32 dots)
      for operands, precision in forward_dots:
        expected = "HIGHEST" if operands == ("f32", "f32") else "DEFAULT"
        assert precision == (expected, expected), (operands, precision)
      assert sum(operands == ("bf16", "bf16") for operands, _ in forward_dots) >= 8
      assert sum(operands == ("f32", "f32") for operands, _ in forward_dots) >= 3
  fast = nnx.split(init_model(config, precision="tensorfloat32"))
  graphdef = fast[0]
  assert {p for _, p in _dots(lambda s, t: nnx.merge(graphdef, s)(t).logits, fast[1], tokens)
          } >= {("HIGH", "HIGH")}
