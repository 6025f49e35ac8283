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
from jaxdistill.train import runs
from jaxdistill.models import from_pretrained, save_pretrained
from jaxdistill.rl.learner import sequence_logprobs


@dataclasses.dataclass(frozen=True)
class SFTSettings:
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


def train_sft(model, tokenizer, task, problems, config: SFTSettings, progress: bool = True):
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


def _marked_settings(directory: str) -> dict | None:
  """The settings a complete warm start in `directory` was made with, or None."""
  marker = os.path.join(directory, "sft_done.json")
  if not os.path.exists(marker):
    return None
  with open(marker) as f:
    return json.load(f).get("settings")


def warm_start(model, tokenizer, task, problems, config: SFTSettings, directory: str,
               progress: bool = True):
  """The warm-started model: read from `directory` if cached, else trained and saved there.

  A directory holding a warm start made with other settings (a cache that several runs or
  a comparison share) is never overwritten: this one is read from, or trained into,
  `directory/settings-<digest of its settings>`."""
  digest = hashlib.sha256(json.dumps([task.describe(p) for p in problems])
                          .encode()).hexdigest()[:16]
  settings = dataclasses.asdict(config) | {"task": task.name,
                                "architecture": dataclasses.asdict(model.config),
                                           "problems": digest}
  settings = json.loads(json.dumps(settings, default=str))
  own = os.path.join(directory, "settings-" + hashlib.sha256(
      json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12])
  held = _marked_settings(directory)
  for candidate, made_with in ((directory, held), (own, _marked_settings(own))):
    if made_with == settings:
      print(f"warm start: reusing {candidate}")
      return from_pretrained(candidate, dtype=model.dtype, param_dtype=model.param_dtype,
                             precision=model.precision_name)
  target = directory
  if held is not None:
    target = own
    old, new = runs.flatten(held), runs.flatten(settings)
    changed = [f"{field}: {old.get(field, '(absent)')!r} -> {new.get(field, '(absent)')!r}"
               for field in sorted(set(old) | set(new)) if old.get(field) != new.get(field)]
    print(f"warm start: {directory} holds one made with other settings "
          f"({'; '.join(changed)}); kept, and this run's is {target}")
  model, loss = train_sft(model, tokenizer, task, problems, config, progress)
  if parallel.is_primary():  # every process trains the same model; one writes it
    marker = os.path.join(target, "sft_done.json")
    save_pretrained(model, target)
    tokenizer.save_pretrained(target)
    with open(marker, "w") as f:  # written last: its presence means the directory is complete
      json.dump({"settings": settings, "final_loss": loss}, f)
    print(f"warm start: {config.steps} steps, final loss {loss:.3f}, saved to {target}")
  return model
