"""Supervised warm start of the tiny model on solver-written step solutions.

Each example is `compact prompt + solution_steps(...) + EOS`; the loss is next-token cross
entropy on the solution tokens only. Training stops after a fixed number of steps, chosen
so that the base model solves a minority of held-out problems (like the instruct model the
reference started from). The result is saved as a Hugging Face directory and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxdistill import parallel, tokenization
from jaxdistill.models import from_pretrained, save_pretrained
from jaxdistill.rl.learner import sequence_logprobs


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Warm-start settings (built by `jaxdistill.settings.warm_start`)."""

  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  sequence_length: int
  seed: int


def build_examples(task, tokenizer, problems, sequence_length: int):
  """Token rows [N, sequence_length + 1] and loss masks [N, sequence_length]: each the
  problem's compact prompt and the task's demonstration, then EOS."""
  ids = tokenization.special_ids(tokenizer)
  rows, masks = [], []
  for p in problems:
    steps = task.demonstration(p)
    if steps is None:
      raise ValueError(f"the task has no demonstration of {task.describe(p)}")
    prompt = tokenizer.encode(task.prompt(p, tokenizer, "compact"), add_special_tokens=False)
    answer = tokenizer.encode(steps, add_special_tokens=False) + [ids.eos_id]
    tokens = prompt + answer
    if len(tokens) > sequence_length + 1:  # a cut answer would teach answers with no end
      raise ValueError(
          f"a warm-start example ({task.describe(p)}) has {len(tokens)} tokens "
          f"(prompt, solution and EOS), more than sft.sequence_length + 1 = "
          f"{sequence_length + 1}: set sft.sequence_length >= {len(tokens) - 1}")
    row = np.full(sequence_length + 1, ids.pad_id, np.int32)
    row[:len(tokens)] = tokens
    mask = np.zeros(sequence_length, np.float32)
    mask[len(prompt) - 1:len(tokens) - 1] = 1.0  # position t predicts token t + 1
    rows.append(row)
    masks.append(mask)
  return np.stack(rows), np.stack(masks)


def train_sft(model, tokenizer, task, problems, config: SFTConfig, progress: bool = True):
  """Fine-tune model in place of a copy; returns (model, final loss)."""
  tokens, masks = build_examples(task, tokenizer, problems, config.sequence_length)
  graphdef, params = nnx.split(model)
  warmup = min(config.warmup_steps, config.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                                max(config.steps, warmup + 1))
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
  opt_state = optimizer.init(params)

  def loss_fn(params, tokens, mask):
    # the learner's chunked log-probs: no [B, T, V] logits (151,936 columns for Qwen)
    logp, _ = sequence_logprobs(graphdef, params, tokens, with_values=False)
    return -(logp * mask).sum() / jnp.maximum(mask.sum(), 1.0)

  @jax.jit
  def step(params, opt_state, tokens, mask):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.RandomState(config.seed)
  loss = float("nan")
  bar = tqdm(range(config.steps), desc="warm start", disable=not progress)
  for _ in bar:
    batch = rng.randint(0, len(tokens), config.batch_size)
    params, opt_state, loss = step(params, opt_state, tokens[batch], masks[batch])
    bar.set_postfix(loss=f"{float(loss):.3f}")
  return nnx.merge(graphdef, params), float(loss)


def warm_start(model, tokenizer, task, problems, config: SFTConfig, directory: str,
               progress: bool = True):
  """The warm-started model: read from `directory` if cached, else trained and saved there."""
  marker = os.path.join(directory, "sft_done.json")
  digest = hashlib.sha256(json.dumps([task.describe(p) for p in problems])
                          .encode()).hexdigest()[:16]
  settings = dataclasses.asdict(config) | {"task": task.name,
                                "architecture": dataclasses.asdict(model.config),
                                           "problems": digest}
  settings = json.loads(json.dumps(settings, default=str))
  if os.path.exists(marker):
    with open(marker) as f:
      cached = json.load(f)
    if cached.get("settings") == settings:
      print(f"warm start: reusing {directory}")
      return from_pretrained(directory, dtype=model.dtype, param_dtype=model.param_dtype,
                             precision=model.precision_name)
    print(f"warm start: {directory} was made with other settings; training a new one")
    os.remove(marker)
  model, loss = train_sft(model, tokenizer, task, problems, config, progress)
  if parallel.is_primary():  # every process trains the same model; one writes it
    save_pretrained(model, directory)
    tokenizer.save_pretrained(directory)
    with open(marker, "w") as f:  # written last: its presence means the directory is complete
      json.dump({"settings": settings, "final_loss": loss}, f)
    print(f"warm start: {config.steps} steps, final loss {loss:.3f}, saved to {directory}")
  return model
