"""The model a run starts from and its tokenizer, from the config alone (no flags, so the
CLI, bench and experiments share it)."""

from __future__ import annotations

import os

from jaxdistill.errors import UsageError


def small_architecture(config, vocab_size: int):
  """The model the config's `model` section describes (the CPU presets' own, built locally)."""
  from jaxdistill.models import Qwen2Config
  m = config.model
  return Qwen2Config(vocab_size=vocab_size, hidden_size=m.hidden_size,
                     intermediate_size=m.intermediate_size,
                     num_hidden_layers=m.num_hidden_layers,
                     num_attention_heads=m.num_attention_heads,
                     num_key_value_heads=m.num_key_value_heads, rope_theta=m.rope_theta,
                     tie_word_embeddings=True)


def load_model_and_tokenizer(config, workdir: str):
  """The initial model and tokenizer: a local HF directory, or built locally (tiny/smoke)."""
  import jax.numpy as jnp

  from jaxdistill import tokenization
  from jaxdistill.models import from_pretrained, init_model
  dtype, param_dtype = jnp.dtype(config.model.dtype), jnp.dtype(config.model.param_dtype)
  if config.preset.startswith("qwen") and not config.model.path:
    raise UsageError(f"preset {config.preset} needs --config.model.path=DIR, a local Hugging "
                     "Face directory of the model (e.g. from `hf download "
                     "Qwen/Qwen2.5-1.5B-Instruct --local-dir DIR`)")
  if config.model.path:
    return (from_pretrained(config.model.path, dtype=dtype, param_dtype=param_dtype,
                            precision=config.model.precision),
            tokenization.load_tokenizer(config.model.path))
  tokenizer = tokenization.build_char_tokenizer(os.path.join(workdir, "tokenizer"))
  arch = small_architecture(config, len(tokenizer))
  return (init_model(arch, seed=config.sft.seed, dtype=dtype, param_dtype=param_dtype,
                     precision=config.model.precision),
          tokenizer)
