"""Sampler throughput: our jitted sampler vs transformers' PyTorch `generate`, one run.

    python -m jaxdistill.bench.sampler [--batch 64 --new_tokens 128] [--qwen_shapes]

Both generate from the same tiny random model (saved once, loaded by both) on the same
ragged batch, sampling at temperature 1 with no early stop. --qwen_shapes adds our sampler
on Qwen2.5-1.5B shapes with random bf16 weights (meant for a GPU) and its achieved HBM
bandwidth (parameter + KV-cache bytes read per decode step).
"""

from __future__ import annotations

import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from jaxdistill.bench.common import best_time, print_table, write_json
from jaxdistill.models import Qwen2Config, from_pretrained, init_model, save_pretrained
from jaxdistill.sampling import generate

flags.DEFINE_integer("batch", 64, "prompts per batch")
flags.DEFINE_integer("new_tokens", 128, "tokens generated per prompt")
flags.DEFINE_integer("repeats", 3, "timed repeats (best is kept)")
flags.DEFINE_bool("torch", True, "also time transformers' PyTorch generate")
flags.DEFINE_bool("qwen_shapes", False, "also time Qwen2.5-1.5B shapes (random bf16 weights)")
flags.DEFINE_string("out", "bench_results/sampler.json", "JSON output")
FLAGS = flags.FLAGS

TINY = Qwen2Config(vocab_size=64, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6)
QWEN25_1P5B = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                          num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                          rope_theta=1e6, tie_word_embeddings=True)


def ragged_prompts(batch: int, vocab: int, seed: int = 0, low: int = 8, high: int = 24):
  rng = np.random.RandomState(seed)
  lengths = rng.randint(low, high + 1, batch).astype(np.int32)
  tokens = rng.randint(2, vocab, (batch, high)).astype(np.int32)
  tokens[np.arange(high)[None] >= lengths[:, None]] = 0
  return tokens, lengths


def time_ours(model, tokens, lengths, new_tokens, repeats):
  run = lambda: jax.block_until_ready(generate(model, tokens, lengths, jax.random.key(0),
                                               max_new_tokens=new_tokens, temperature=1.0))
  start = time.perf_counter()
  out = run()
  compile_s = time.perf_counter() - start
  seconds = best_time(run, repeats)
  assert int(np.asarray(out.lengths).min()) == new_tokens
  return seconds, compile_s


def time_torch(path, tokens, lengths, new_tokens, repeats):
  import torch
  from transformers import Qwen2ForCausalLM
  torch.set_num_threads(max(1, os.cpu_count()))
  model = Qwen2ForCausalLM.from_pretrained(path).eval()
  model.generation_config.eos_token_id = None
  width = tokens.shape[1]
  left = np.zeros_like(tokens)
  mask = np.zeros_like(tokens)
  for row, n in enumerate(lengths):
    left[row, width - n:] = tokens[row, :n]
    mask[row, width - n:] = 1
  inputs = dict(input_ids=torch.tensor(left, dtype=torch.long),
                attention_mask=torch.tensor(mask), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0,
                top_k=0, pad_token_id=0)

  def run():
    with torch.no_grad():
      out = model.generate(**inputs)
    assert out.shape[1] == width + new_tokens

  run()  # warm-up
  return best_time(run, repeats)


def main(argv):
  del argv
  batch, new = FLAGS.batch, FLAGS.new_tokens
  tokens, lengths = ragged_prompts(batch, TINY.vocab_size)
  rows = []
  with tempfile.TemporaryDirectory() as path:
    save_pretrained(init_model(TINY, seed=0), path)
    model = from_pretrained(path)
    ours_s, compile_s = time_ours(model, tokens, lengths, new, FLAGS.repeats)
    rows.append({"sampler": "jaxdistill (jit)", "model": "tiny", "seconds": ours_s,
                 "tokens_per_s": batch * new / ours_s, "compile_s": compile_s})
    if FLAGS.torch:
      torch_s = time_torch(path, tokens, lengths, new, FLAGS.repeats)
      rows.append({"sampler": "transformers generate (torch)", "model": "tiny",
                   "seconds": torch_s, "tokens_per_s": batch * new / torch_s})
      rows[0]["speedup_vs_torch"] = torch_s / ours_s
  if FLAGS.qwen_shapes:
    big = init_model(QWEN25_1P5B, seed=0, dtype=jnp.bfloat16)
    qt, ql = ragged_prompts(batch, QWEN25_1P5B.vocab_size, low=32, high=64)
    seconds, compile_s = time_ours(big, qt, ql, new, FLAGS.repeats)
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(big)))
    c = QWEN25_1P5B
    kv_bytes_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2
    mean_context = ql.mean() + new / 2
    step_bytes = param_bytes + batch * mean_context * kv_bytes_per_token
    rows.append({"sampler": "jaxdistill (jit)", "model": "qwen2.5-1.5b shapes, bf16",
                 "seconds": seconds, "tokens_per_s": batch * new / seconds,
                 "compile_s": compile_s, "hbm_gb_per_s": step_bytes * new / seconds / 1e9})
  print(f"batch {batch}, {new} new tokens, ragged prompts {lengths.min()}-{lengths.max()}")
  print_table(rows, ["sampler", "model", "seconds", "tokens_per_s", "compile_s",
                     "speedup_vs_torch", "hbm_gb_per_s"])
  write_json(FLAGS.out, {"batch": batch, "new_tokens": new, "rows": rows})


if __name__ == "__main__":
  app.run(main)
