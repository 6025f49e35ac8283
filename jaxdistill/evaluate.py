"""Evaluation without search: mean@k and pass@k of sampled answers on held-out problems."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxdistill import sampling, tokenization
from jaxdistill.tasks import countdown


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """mean@k settings (DESIGN §7 reference: k 16, temperature 0.2, top-p 1)."""

  k: int = 16
  temperature: float = 0.2
  top_p: float = 1.0
  max_new_tokens: int = 512
  batch_size: int = 256  # rows (problem x sample) per generate call
  prompt_width: int = 64


def encode_prompts(tokenizer, problems, prompt: str, width: int):
  """Right-padded prompt tokens [N, width] and lengths for problems."""
  if prompt == "chat":
    texts = [countdown.chat_prompt(tokenizer, p.numbers, p.target) for p in problems]
  else:
    texts = [countdown.compact_prompt(p.numbers, p.target) for p in problems]
  return tokenization.encode_batch(tokenizer, texts, max_length=width)


def evaluate(model, tokenizer, problems, config: EvalConfig, seed: int = 0,
             prompt: str = "compact", progress=None) -> dict:
  """mean@k (mean sparse reward over k samples each) and pass@k (any of k correct)."""
  ids = tokenization.special_ids(tokenizer)
  tokens, lengths = encode_prompts(tokenizer, problems, prompt, config.prompt_width)
  rows_tokens = np.repeat(tokens, config.k, axis=0)
  rows_lengths = np.repeat(lengths, config.k, axis=0)
  total = len(rows_tokens)
  # pad the last chunk to a full batch so every call has the same shapes (one compile)
  pad = (-total) % config.batch_size
  rows_tokens = np.concatenate([rows_tokens, np.repeat(rows_tokens[:1], pad, 0)])
  rows_lengths = np.concatenate([rows_lengths, np.repeat(rows_lengths[:1], pad, 0)])
  keys = jax.random.split(jax.random.PRNGKey(seed), len(rows_tokens))
  rewards = np.zeros(total, np.float32)
  generated = 0
  for start in range(0, total, config.batch_size):
    stop = start + config.batch_size
    out = jax.device_get(sampling.generate(
        model, rows_tokens[start:stop], rows_lengths[start:stop], None,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_p=config.top_p, stop_ids=(ids.eos_id,), pad_id=ids.pad_id,
        row_keys=keys[start:stop]))
    for i in range(min(stop, total) - start):
      p = problems[(start + i) // config.k]
      text = tokenization.decode(tokenizer, out.tokens[i], int(out.lengths[i]))
      rewards[start + i] = countdown.reward(text, p.numbers, p.target, dense=False)
      generated += int(out.lengths[i])
    if progress is not None:
      progress(min(stop, total), total)
  per_problem = rewards.reshape(len(problems), config.k)
  return {f"mean@{config.k}": float(per_problem.mean()),
          f"pass@{config.k}": float((per_problem > 0).any(-1).mean()),
          "problems": len(problems), "generated_tokens": generated}
