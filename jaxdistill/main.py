"""Entry point: `python -m jaxdistill.main --config configs/countdown.py[:preset]`.

Until the training program lands this runs the sampling job: load (qwen presets) or build
(tiny, smoke) the model and tokenizer, sample answers to held-out Countdown problems, and
grade them.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/countdown.py[:preset]",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


class UsageError(Exception):
  """A problem the user can fix; printed as one line."""


def load_model_and_tokenizer(config):
  """The model and tokenizer of a config: a local HF directory, or built locally (tiny)."""
  import jax.numpy as jnp

  from jaxdistill import tokenization
  from jaxdistill.models import Qwen2Config, from_pretrained, init_model
  dtype = jnp.dtype(config.model.dtype)
  if config.preset.startswith("qwen") and not config.model.path:
    raise UsageError(f"preset {config.preset} needs --config.model.path=DIR, a local Hugging "
                     "Face directory of the model (e.g. from `huggingface-cli download "
                     "Qwen/Qwen2.5-1.5B-Instruct --local-dir DIR`)")
  if config.model.path:
    return from_pretrained(config.model.path, dtype=dtype), tokenization.load_tokenizer(
        config.model.path)
  tokenizer_dir = os.path.join(config.workdir, "tokenizer")
  tokenizer = tokenization.build_char_tokenizer(tokenizer_dir)
  m = config.model
  arch = Qwen2Config(vocab_size=len(tokenizer), hidden_size=m.hidden_size,
                     intermediate_size=m.intermediate_size,
                     num_hidden_layers=m.num_hidden_layers,
                     num_attention_heads=m.num_attention_heads,
                     num_key_value_heads=m.num_key_value_heads, rope_theta=m.rope_theta,
                     tie_word_embeddings=True)
  return init_model(arch, seed=config.seed, dtype=dtype), tokenizer


def sample_job(config) -> dict:
  """Sample answers to held-out problems and grade them; returns summary numbers."""
  import jax
  import numpy as np

  from jaxdistill import tokenization
  from jaxdistill.models import num_params
  from jaxdistill.sampling import generate
  from jaxdistill.tasks import countdown

  model, tokenizer = load_model_and_tokenizer(config)
  ids = tokenization.special_ids(tokenizer)
  problems = countdown.generate(config.sample.num_prompts, seed=config.task.data_seed)
  if config.task.prompt == "chat":
    prompts = [countdown.chat_prompt(tokenizer, p.numbers, p.target) for p in problems]
  else:
    prompts = [countdown.compact_prompt(p.numbers, p.target) for p in problems]
  tokens, lengths = tokenization.encode_batch(tokenizer, prompts)
  print(f"model: {num_params(model):,} parameters; {len(problems)} prompts")
  start = time.perf_counter()
  out = generate(model, tokens, lengths, jax.random.key(config.seed),
                 max_new_tokens=config.sample.max_new_tokens,
                 temperature=config.sample.temperature, top_p=config.sample.top_p,
                 stop_ids=(ids.eos_id,), pad_id=ids.pad_id)
  out = jax.device_get(out)
  seconds = time.perf_counter() - start
  rewards = []
  for row, p in enumerate(problems):
    text = tokenization.decode(tokenizer, out.tokens[row], int(out.lengths[row]))
    rewards.append(countdown.reward(text, p.numbers, p.target, dense=False))
    if row < 3:
      print(f"{p.numbers} -> {p.target}: {text[:120]!r}")
  summary = {"mean_sparse_reward": float(np.mean(rewards)),
             "generated_tokens": int(np.sum(out.lengths)), "seconds": seconds}
  print(f"solved {summary['mean_sparse_reward']:.1%}; {summary['generated_tokens']} tokens in "
        f"{seconds:.1f}s (compile included)")
  return summary


def main(argv):
  """Run the job the config describes."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  from jaxdistill.models import CheckpointError
  from jaxdistill.tokenization import TokenizerError
  with config.unlocked():
    config.workdir = config.workdir or os.path.join("runs", config.preset)
  try:
    os.makedirs(config.workdir, exist_ok=True)
    if not os.access(config.workdir, os.W_OK):
      raise UsageError(f"workdir {config.workdir!r} is not writable")
    logging.info("workdir %s", config.workdir)
    sample_job(config)
  except (UsageError, CheckpointError, TokenizerError, PermissionError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
