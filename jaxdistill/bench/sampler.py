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


def define_flags():
  """The command's flags, defined only when it runs (its functions may be imported beside
  other commands' flags, such as jaxdistill.main's --out)."""
  flags.DEFINE_integer("batch", 64, "prompts per batch")
  flags.DEFINE_integer("new_tokens", 128, "tokens generated per prompt")
  flags.DEFINE_integer("repeats", 3, "timed repeats (best is kept)")
  flags.DEFINE_bool("torch", True, "also time transformers' PyTorch generate")
  flags.DEFINE_bool("qwen_shapes", False, "also time Qwen2.5-1.5B shapes (random bf16 weights)")
  flags.DEFINE_string("out", "bench_results/sampler.json", "JSON output")
  flags.DEFINE_string("trace", "", "directory: profile one generate of the largest model timed "
                      "and print where device time goes")


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


def time_torch(path_or_config, tokens, lengths, new_tokens, repeats):
  """transformers' generate from a saved directory (CPU, fp32) or, given a Qwen2Config,
  a random bf16 model of its shapes on the GPU."""
  import torch
  from transformers import Qwen2ForCausalLM
  torch.set_num_threads(max(1, os.cpu_count()))
  device = "cpu"
  if isinstance(path_or_config, Qwen2Config):
    from transformers import Qwen2Config as HFConfig
    c = path_or_config
    hf = HFConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                  intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
                  num_attention_heads=c.num_attention_heads,
                  num_key_value_heads=c.num_key_value_heads, rope_theta=c.rope_theta,
                  tie_word_embeddings=c.tie_word_embeddings)
    device = "cuda"
    model = Qwen2ForCausalLM(hf).to(device=device, dtype=torch.bfloat16).eval()
  else:
    model = Qwen2ForCausalLM.from_pretrained(path_or_config).eval()
  model.generation_config.eos_token_id = None
  width = tokens.shape[1]
  left = np.zeros_like(tokens)
  mask = np.zeros_like(tokens)
  for row, n in enumerate(lengths):
    left[row, width - n:] = tokens[row, :n]
    mask[row, width - n:] = 1
  inputs = dict(input_ids=torch.tensor(left, dtype=torch.long, device=device),
                attention_mask=torch.tensor(mask, device=device), max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0,
                top_k=0, pad_token_id=0)

  def run():
    with torch.no_grad():
      out = model.generate(**inputs)
    if device == "cuda":
      torch.cuda.synchronize()
    assert out.shape[1] == width + new_tokens

  run()  # warm-up
  return best_time(run, repeats)


def from_tiny():
  return init_model(TINY, seed=0)


def peak_copy_bandwidth(gigabytes: float = 2.0) -> float:
  """Measured device-to-device copy rate (bytes read + written per second): the ceiling."""
  x = jnp.ones((int(gigabytes * 2**30) // 4,), jnp.float32)
  copy = jax.jit(lambda a: a * 1.0001)
  jax.block_until_ready(copy(x))
  seconds = best_time(lambda: jax.block_until_ready(copy(x)), 5)
  return 2 * x.size * 4 / seconds


def decode_bytes(config: Qwen2Config, model, batch: int, context: float, slots: int):
  """(minimal bytes, bytes our step reads) per decode step: the LM's parameters once (the
  embedding table once, as the output head when tied) plus the KV of the filled context
  (minimal) or of every cache slot our attention reads; the value head is counted apart."""
  state = nnx.state(model, nnx.Param)
  value_bytes = sum(x.size * x.dtype.itemsize
                    for x in jax.tree.leaves(nnx.state(model.value_head, nnx.Param)))
  lm_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) - value_bytes
  per_slot = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
  per_slot *= jnp.dtype(model.dtype).itemsize
  return (lm_bytes + batch * context * per_slot,
          lm_bytes + value_bytes + batch * slots * per_slot, value_bytes)


def qwen_rows(batch: int, new: int):
  """Our sampler (and transformers' on a GPU) at Qwen2.5-1.5B shapes, random bf16 weights."""
  big = init_model(QWEN25_1P5B, seed=0, dtype=jnp.bfloat16)
  qt, ql = ragged_prompts(batch, QWEN25_1P5B.vocab_size, low=32, high=64)
  seconds, compile_s = time_ours(big, qt, ql, new, FLAGS.repeats)
  minimal, read, _ = decode_bytes(QWEN25_1P5B, big, batch, ql.mean() + new / 2,
                                  qt.shape[1] + new)
  peak = peak_copy_bandwidth() if jax.devices()[0].platform == "gpu" else None
  row = {"sampler": "jaxdistill (jit)", "model": "qwen2.5-1.5b shapes, bf16",
         "seconds": seconds, "tokens_per_s": batch * new / seconds, "compile_s": compile_s,
         "min_gb_per_s": minimal * new / seconds / 1e9,
         "read_gb_per_s": read * new / seconds / 1e9}
  if peak:
    row |= {"peak_copy_gb_per_s": peak / 1e9, "roofline_share": minimal * new / seconds / peak}
  rows = [row]
  if FLAGS.torch and jax.devices()[0].platform == "gpu":
    torch_s = time_torch(QWEN25_1P5B, qt, ql, new, FLAGS.repeats)
    rows.append({"sampler": "transformers generate (torch)", "model": row["model"],
                 "seconds": torch_s, "tokens_per_s": batch * new / torch_s,
                 "min_gb_per_s": minimal * new / torch_s / 1e9})
    row["speedup_vs_torch"] = torch_s / seconds
  return rows


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
    rows += qwen_rows(batch, new)
  if FLAGS.trace:
    from jaxdistill.bench import trace
    big = FLAGS.qwen_shapes
    model = init_model(QWEN25_1P5B, seed=0, dtype=jnp.bfloat16) if big else from_tiny()
    qt, ql = (ragged_prompts(batch, QWEN25_1P5B.vocab_size, low=32, high=64) if big
              else (tokens, lengths))
    run = lambda: jax.block_until_ready(generate(model, qt, ql, jax.random.key(0),
                                                 max_new_tokens=new, temperature=1.0))
    run()
    trace.print_summary(*trace.profile(run, FLAGS.trace),
                        title=f"where one generate goes ({'qwen shapes' if big else 'tiny'})")
  print(f"batch {batch}, {new} new tokens, ragged prompts {lengths.min()}-{lengths.max()}")
  print_table(rows, ["sampler", "model", "seconds", "tokens_per_s", "compile_s",
                     "speedup_vs_torch", "min_gb_per_s", "read_gb_per_s", "roofline_share"])
  write_json(FLAGS.out, {"batch": batch, "new_tokens": new, "rows": rows})


if __name__ == "__main__":
  define_flags()
  app.run(main)
