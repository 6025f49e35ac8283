"""The expand function backed by the language model: a node is a prefix of reasoning steps.

A node's embedding holds its path (prompt + the steps that lead to it, in a fixed-stride
buffer) and the K candidate steps it sampled. Expanding the edge (node, k) appends the
node's k-th candidate to its path, then evaluates the new path:
  * terminal (the step ended with EOS, or no room is left for another step): its value is
    the task reward (inside the program when the task has a device reward, else in Python
    through `jax.pure_callback`); never the value head,
    never expanded;
  * otherwise: one prefill of the path, the value head at its last token is the node's
    value, and K step continuations are sampled from the prefilled cache (temperature, stop
    at step-end or EOS or L tokens); prior logits = their summed log-probs at temperature 1
    (optionally divided by their length).
Options: `dedup_children` merges identical candidate steps into one child (prior mass
summed; the freed slots get a -inf prior and are never selected); `rollout_to_end` decodes
each of the K continuations on to EOS in the same batched decode: the candidate step is its
text up to the first step end, the node's value is the mean task reward of its K rollouts
(not the value head), and the rollouts are kept as complete trajectories (tree targets).
`branch_at='entropy'` (with rollout_to_end) cuts each candidate where its rollout was most
uncertain instead of at its first step end: the candidate is the rollout's text before its
highest-entropy token among the first L (EPTree-style branching), so the child's own K
rollouts re-decide exactly that token.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill import sampling, stopping
from jaxdistill.models.qwen2 import KVCache
from jaxdistill.search.tree import ExpandOutput, Lineage, RootOutput


@chex.dataclass(frozen=True)
class NodeState:
  """Embedding of one node (leading axis: rows)."""

  path_tokens: jax.Array  # [M, P] int32 prompt + steps, pad after path_length
  # [M, P] float32 log-prob of each step token under the distribution it was sampled from
  # (the behaviour policy the learner's ratio divides by); 0 on the prompt and padding
  path_logprobs: jax.Array
  path_length: jax.Array  # [M] int32
  prompt_length: jax.Array  # [M] int32: the generated part starts here
  problem: jax.Array  # [M] int32 index of the row's problem (for the reward)
  candidate_tokens: jax.Array  # [M, K, L] int32 the K sampled next steps
  candidate_lengths: jax.Array  # [M, K] int32
  candidate_logprobs: jax.Array  # [M, K] float32 summed log-probs at temperature 1
  candidate_sample_logprobs: jax.Array  # [M, K, L] float32 per token, as sampled
  # rollout_to_end (R = max_rollout_tokens, 0 without it): each candidate continued to EOS
  rollout_tokens: jax.Array  # [M, K, R] int32 the whole continuation (candidate included)
  rollout_lengths: jax.Array  # [M, K] int32
  rollout_rewards: jax.Array  # [M, K] float32 task reward of path + rollout
  rollout_logprobs: jax.Array  # [M, K, R] float32 per token, as sampled
  # reuse_kv (None without it): the KV of the node's own step, and where each path token's KV
  # is kept. The tree's nodes together are its KV pool; the prompt's KV is the root's context
  # (`PromptKV`), so a path's KV is gathered, never recomputed.
  # [M, layers, L, kv_heads, head_dim], the compute dtype's bits as unsigned integers of its
  # width (`_as_bits`)
  step_keys: jax.Array | None = None
  step_values: jax.Array | None = None
  # [M, P] int32: path token p's KV is prompt slot path_slot (< T, the prompt's width) or
  # step slot (path_slot - T) % L of node (path_slot - T) // L; 0 past the path
  path_slot: jax.Array | None = None


@chex.dataclass(frozen=True)
class PromptKV:
  """The prompt's KV of each tree (reuse_kv): prefilled once, read by every expansion."""

  keys: jax.Array  # [B, layers, T, kv_heads, head_dim], the prompt left-aligned in T slots
  values: jax.Array  # [B, layers, T, kv_heads, head_dim]


@dataclasses.dataclass(frozen=True)
class LMSearchSettings:
  """Static settings of the LM expansion (built by `settings.search`; the token ids and the
  step end come from the tokenizer and the task)."""

  num_children: int  # K
  max_step_tokens: int  # L
  max_path_tokens: int  # P: prompt + steps
  temperature: float
  length_normalized_prior: bool
  dedup_children: bool
  rollout_to_end: bool
  max_rollout_tokens: int  # R: rollout length cap (rollout_to_end)
  branch_at: str  # step: candidates end at a step end | entropy (rollout_to_end)
  # keep each node's step KV in the tree and prefill only the appended step (False: every
  # expansion prefills its whole path again; the same trees, for comparison and tests)
  reuse_kv: bool = False
  step_end_id: int = 0  # a step-end token id, used when no step_end string is given
  eos_id: int = 1
  pad_id: int = 0
  # the step-end string (`stopping.stop_for(tokenizer, '</step>')`): a step ends after the
  # token that completes it, whatever the tokenization
  step_end: stopping.StopString | None = None

  def step_end_stop(self, vocab_size: int) -> stopping.StopString:
    """The step end as a stop string (a one-token string for a bare step_end_id)."""
    if self.step_end is not None:
      return self.step_end
    return _single_token_stop(self.step_end_id, vocab_size)


@functools.lru_cache(maxsize=8)
def _single_token_stop(token_id: int, vocab_size: int) -> stopping.StopString:
  return stopping.single_token(token_id, vocab_size)


RewardFn = Callable[[np.ndarray, int], float]
"""(one row's generated tokens, problem id) -> reward, graded on the host; a reward with a
`device` attribute (`rewards.TaskReward`) is graded inside the program instead."""


def _evaluate(model, config: LMSearchSettings, state: NodeState, keys, terminal, reward_fn,
              prefilled=None):
  """Value, prior logits and K candidates of each row's path (terminal rows: the reward).

  prefilled: (cache, next-token logits [M, V], value [M]) of the path when its KV is at hand
  (reuse_kv); otherwise the path is prefilled here."""
  rows = state.path_tokens.shape[0]
  k, steps = config.num_children, config.max_step_tokens
  row_keys = sampling.split_per_row(keys, k)
  rollout = config.rollout_to_end
  if config.branch_at not in ("step", "entropy"):
    raise ValueError(f"branch_at must be 'step' or 'entropy', got {config.branch_at!r}")
  by_entropy = config.branch_at == "entropy"
  if by_entropy and not rollout:
    raise ValueError("branch_at='entropy' needs rollout_to_end=True (it cuts rollouts)")
  # the K children share the path's prefill (one KV cache, no K copies); a rollout stops
  # at EOS only (the step end is tracked), a plain step also at the step end
  options = dict(samples=k, max_new_tokens=config.max_rollout_tokens if rollout else steps,
                 temperature=config.temperature, top_p=1.0, stop_ids=(config.eos_id,),
                 pad_id=config.pad_id,
                 stop_string=config.step_end_stop(model.config.vocab_size),
                 stop_on_string=not rollout, with_entropy=by_entropy)
  if prefilled is None:
    out = sampling.sample_continuations(model, state.path_tokens, state.path_length, row_keys,
                                        **options)
  else:
    out = sampling.continue_prefilled(model, *prefilled, row_keys, **options)
  tokens, logprobs, sampled = out.tokens, out.logprobs, out.sample_logprobs
  if by_entropy:  # the candidate: the rollout before its most uncertain token j (1 <= j <= L)
    position = jnp.arange(tokens.shape[1])[None]
    eligible = (position >= 1) & (position < out.lengths[:, None]) & (position <= steps)
    branch = jnp.argmax(jnp.where(eligible, out.entropies, -jnp.inf), axis=-1)
    lengths = jnp.where(eligible.any(-1), branch,
                        jnp.minimum(out.lengths, steps)).astype(jnp.int32)
  elif rollout:  # the candidate step: the rollout up to its first step end (at most L tokens)
    first = jnp.where(out.string_end > 0, out.string_end, out.lengths)
    lengths = jnp.minimum(first, steps)
  if rollout:
    in_step = jnp.arange(tokens.shape[1])[None] < lengths[:, None]
    logprobs = jnp.where(in_step, logprobs, 0.0)[:, :steps]
    sampled = jnp.where(in_step, sampled, 0.0)[:, :steps]
    tokens = jnp.where(in_step, tokens, config.pad_id)[:, :steps]
  else:
    lengths = out.lengths
  lengths = lengths.reshape(rows, k)
  logprobs = logprobs.sum(-1).reshape(rows, k)
  candidates = tokens.reshape(rows, k, steps)
  prior = logprobs / jnp.maximum(lengths, 1) if config.length_normalized_prior else logprobs
  if config.dedup_children:
    prior = merge_duplicate_children(candidates, lengths, prior)
  task_reward = task_rewards(state.path_tokens, state.prompt_length, state.path_length,
                             state.problem, reward_fn, rows=terminal)
  value = out.prompt_value[::k]
  if rollout:
    rollout_rewards = _rollout_rewards(state, out, k, reward_fn,
                                       config.pad_id).reshape(rows, k)
    value = rollout_rewards.mean(-1)
    extra = dict(rollout_tokens=out.tokens.reshape(rows, k, -1),
                 rollout_lengths=out.lengths.reshape(rows, k), rollout_rewards=rollout_rewards,
                 rollout_logprobs=out.sample_logprobs.reshape(rows, k, -1))
  else:
    extra = {}
  value = jnp.where(terminal, task_reward, value)
  return value, prior, state.replace(candidate_tokens=candidates, candidate_lengths=lengths,
                                     candidate_logprobs=logprobs,
                                     candidate_sample_logprobs=sampled.reshape(rows, k, steps),
                                     **extra)


def _rollout_rewards(state: NodeState, out, k: int, reward_fn, pad_id: int):
  """Task reward [M * K] of each row's path followed by each of its K rollouts."""
  repeat = lambda x: jnp.repeat(x, k, axis=0)
  full, total = sampling.concat_completion(repeat(state.path_tokens), repeat(state.path_length),
                                  out.tokens, out.lengths, pad_id)
  return task_rewards(full, repeat(state.prompt_length), total, repeat(state.problem),
                      reward_fn)


def merge_duplicate_children(candidates, lengths, prior):
  """Prior logits [M, K] with identical candidate steps merged into their first occurrence:
  it gets the summed prior mass (log-sum-exp), later copies -inf (never selected).

  candidates [M, K, L] and lengths [M, K]: a step is its first `length` tokens."""
  k, steps = candidates.shape[1:]
  valid = jnp.arange(steps)[None, None] < lengths[..., None]
  masked = jnp.where(valid, candidates, -1)
  same = ((masked[:, :, None] == masked[:, None, :]).all(-1)
          & (lengths[:, :, None] == lengths[:, None, :]))  # [M, K, K]
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)  # [i, j]: j < i
  duplicate = (same & earlier[None]).any(-1)  # an earlier copy exists
  merged = jax.nn.logsumexp(jnp.where(same, prior[:, None, :], -jnp.inf), axis=-1)
  return jnp.where(duplicate, -jnp.inf, merged)


def task_rewards(tokens, start, end, problems, reward_fn: RewardFn, rows=None):
  """Rewards [M] of tokens[start:end] per row (the generated part only): inside the program
  when the reward has a device form (`reward_fn.device`), else from Python through a host
  callback.

  rows [M] bool, when given, limits grading to those rows (the others get 0).
  """
  positions = jnp.arange(tokens.shape[1])[None]
  generated = (positions >= start[:, None]) & (positions < end[:, None])
  marked = jnp.where(generated, tokens, -1)  # -1: not generated
  if rows is None:
    rows = jnp.ones(problems.shape, bool)
  device = getattr(reward_fn, "device", None)
  if device is not None:
    return jnp.where(rows, device(marked, problems), 0.0).astype(jnp.float32)

  def host(marked, problems, rows):
    rewards = np.zeros(marked.shape[0], np.float32)
    for row in np.flatnonzero(rows):
      rewards[row] = reward_fn(marked[row][marked[row] >= 0], int(problems[row]))
    return rewards

  rewards = jax.pure_callback(host, jax.ShapeDtypeStruct(problems.shape, jnp.float32), marked,
                              problems, rows, vmap_method="sequential")
  return rewards


def root_output(model, config: LMSearchSettings, prompt_tokens, prompt_lengths, problems,
                keys, reward_fn) -> RootOutput:
  """Root of each tree: the prompt, its value, and its K candidate first steps."""
  rows = prompt_tokens.shape[0]
  width = config.max_path_tokens
  if prompt_tokens.shape[1] > width:
    raise ValueError(f"prompts of {prompt_tokens.shape[1]} tokens exceed max_path_tokens={width}")
  path = jnp.full((rows, width), config.pad_id, jnp.int32)
  path = path.at[:, :prompt_tokens.shape[1]].set(prompt_tokens)
  k, steps = config.num_children, config.max_step_tokens
  state = NodeState(path_tokens=path, path_logprobs=jnp.zeros((rows, width), jnp.float32),
                    path_length=prompt_lengths.astype(jnp.int32),
                    prompt_length=prompt_lengths.astype(jnp.int32),
                    problem=problems.astype(jnp.int32),
                    candidate_tokens=jnp.zeros((rows, k, steps), jnp.int32),
                    candidate_lengths=jnp.zeros((rows, k), jnp.int32),
                    candidate_logprobs=jnp.zeros((rows, k), jnp.float32),
                    candidate_sample_logprobs=jnp.zeros((rows, k, steps), jnp.float32),
                    rollout_tokens=jnp.zeros((rows, k, rollout_width(config)), jnp.int32),
                    rollout_lengths=jnp.zeros((rows, k), jnp.int32),
                    rollout_rewards=jnp.zeros((rows, k), jnp.float32),
                    rollout_logprobs=jnp.zeros((rows, k, rollout_width(config)), jnp.float32))
  terminal = jnp.zeros((rows,), bool)
  if not config.reuse_kv:
    value, prior, state = _evaluate(model, config, state, keys, terminal, reward_fn)
    return RootOutput(prior_logits=prior, value=value, embedding=state)
  # the prompt alone is prefilled (T slots, left-aligned): its KV is the tree's context
  cache, logits, value = sampling.prefill(model, prompt_tokens, prompt_lengths,
                                          prompt_tokens.shape[1], config.pad_id)
  width = prompt_tokens.shape[1]
  positions = jnp.arange(config.max_path_tokens)[None]
  slot = width - prompt_lengths.astype(jnp.int32)[:, None] + positions  # left-aligned prompt
  path_slot = jnp.where(positions < prompt_lengths[:, None], slot, 0).astype(jnp.int32)
  step_kv = _as_bits(jnp.zeros((rows,) + _step_kv_shape(model.config, steps), model.dtype))
  state = state.replace(step_keys=step_kv, step_values=step_kv, path_slot=path_slot)
  value, prior, state = _evaluate(model, config, state, keys, terminal, reward_fn,
                                  prefilled=(cache, logits, value))
  context = PromptKV(keys=_slot_major(cache.key_states, keys_layout=True),
                     values=_slot_major(cache.value_states, keys_layout=False))
  return RootOutput(prior_logits=prior, value=value, embedding=state, context=context)


def _step_kv_shape(model_config, steps: int):
  """[layers, L, kv_heads, head_dim]: one node's step KV."""
  c = model_config
  return (c.num_hidden_layers, steps, c.num_key_value_heads, c.head_dim)


def _as_bits(kv):
  """The pool's storage: the KV's bits as unsigned integers of the same width (exact both
  ways). XLA:CPU runs a bf16 gather or scatter on an fp32 copy of its whole operand, which
  made the pool cost 2.7-2.9 times its size in bf16 (docs/benchmarks.md); integers it moves as
  they are, and on accelerators the bitcast is free."""
  return jax.lax.bitcast_convert_type(kv, jnp.dtype(f"uint{kv.dtype.itemsize * 8}"))


def _slot_major(per_layer, keys_layout: bool, slots=slice(None)):
  """Cache arrays (layers x [M, kv, D, S] keys or [M, kv, S, D] values) -> [M, layers, S', kv,
  D] for the slots selected."""
  if keys_layout:
    return jnp.stack([k[..., slots].transpose(0, 3, 1, 2) for k in per_layer], axis=1)
  return jnp.stack([v[:, :, slots].transpose(0, 2, 1, 3) for v in per_layer], axis=1)


def _path_cache(config: LMSearchSettings, parent: NodeState, lineage: Lineage, extra: int):
  """The KV cache of each row's parent path, gathered from its tree (prompt context and its
  ancestors' steps): P + extra slots, slot p holding path token p (valid below the path's
  length), the `extra` slots free for the step to append."""
  prompt = lineage.context
  width = prompt.keys.shape[2]  # T
  steps = config.max_step_tokens
  slot = parent.path_slot  # [M, P]
  tree = lineage.tree[:, None]
  in_prompt = slot < width
  node = jnp.maximum(slot - width, 0) // steps
  offset = jnp.maximum(slot - width, 0) % steps
  prompt_slot = jnp.minimum(slot, width - 1)

  def gather(from_prompt, from_steps):  # -> [M, P, layers, kv, D]
    a = from_prompt[tree, :, prompt_slot]
    b = jax.lax.bitcast_convert_type(from_steps[tree, node, :, offset], a.dtype)
    return jnp.where(in_prompt[..., None, None, None], a, b)

  keys = gather(prompt.keys, lineage.embeddings.step_keys)
  values = gather(prompt.values, lineage.embeddings.step_values)
  pad = ((0, 0), (0, extra), (0, 0), (0, 0), (0, 0))
  keys, values = jnp.pad(keys, pad), jnp.pad(values, pad)
  layers = keys.shape[2]
  slots = slot.shape[1] + extra
  valid = jnp.arange(slots)[None] < parent.path_length[:, None]
  return KVCache(key_states=tuple(keys[:, :, i].transpose(0, 2, 3, 1) for i in range(layers)),
                 value_states=tuple(values[:, :, i].transpose(0, 2, 1, 3)
                                    for i in range(layers)),
                 valid=valid, end=jnp.asarray(slot.shape[1], jnp.int32))


def rollout_width(config: LMSearchSettings) -> int:
  """R: tokens kept per rollout (0 without rollout_to_end, so nodes carry no buffer)."""
  return config.max_rollout_tokens if config.rollout_to_end else 0


def splice(buffer, at, piece, piece_length):
  """buffer [M, P] with piece [M, L]'s first piece_length entries written from index at [M]
  (what does not fit is cut)."""
  positions = jnp.arange(buffer.shape[1])[None]
  offset = positions - at[:, None]
  inside = (offset >= 0) & (offset < piece_length[:, None])
  gathered = jnp.take_along_axis(piece, jnp.clip(offset, 0, piece.shape[1] - 1), axis=1)
  return jnp.where(inside, gathered.astype(buffer.dtype), buffer)


def extend_path(config: LMSearchSettings, path_tokens, path_length, step, step_length):
  """(path + step tokens [M, P], new length [M], step ends with EOS [M]) for step [M, L]."""
  rows = step.shape[0]
  path = splice(path_tokens, path_length, step, step_length)
  length = jnp.minimum(path_length + step_length, config.max_path_tokens)
  last = step[jnp.arange(rows), jnp.maximum(step_length - 1, 0)]
  ended = (step_length > 0) & (last == config.eos_id)
  return path, length, ended


def chosen_step(parent: NodeState, action):
  """(tokens [M, L], length [M]) of each row's candidate `action`."""
  rows = jnp.arange(action.shape[0])
  return parent.candidate_tokens[rows, action], parent.candidate_lengths[rows, action]


def append_step(config: LMSearchSettings, parent: NodeState, action):
  """Child states: the parent's path + its candidate `action` (no candidates yet)."""
  rows = jnp.arange(action.shape[0])
  step, step_length = chosen_step(parent, action)
  path, length, ended = extend_path(config, parent.path_tokens, parent.path_length, step,
                                    step_length)
  logprobs = splice(parent.path_logprobs, parent.path_length,
                    parent.candidate_sample_logprobs[rows, action], step_length)
  return parent.replace(path_tokens=path, path_logprobs=logprobs, path_length=length), ended


def _prefill_step(model, config: LMSearchSettings, parent: NodeState, child: NodeState, action,
                  lineage: Lineage):
  """Prefill only the appended step, attending to its path's KV gathered from the tree.

  Returns ((cache, next-token logits, value) at the step's end, the child with its step KV
  and slots)."""
  steps = config.max_step_tokens
  step, step_length = chosen_step(parent, action)
  cache = _path_cache(config, parent, lineage, steps)
  # left-aligned in its L slots, so the last slot holds the step's last token
  aligned, mask = sampling.left_align(step, step_length, config.pad_id)
  out = model(aligned, attention_mask=mask, cache=cache, last_only=True)
  width = parent.path_slot.shape[1]
  own = slice(width, width + steps)
  child = child.replace(
      step_keys=_as_bits(_slot_major(out.cache.key_states, True, own)),
      step_values=_as_bits(_slot_major(out.cache.value_states, False, own)),
      path_slot=splice(parent.path_slot, parent.path_length,
                       (lineage.context.keys.shape[2] + lineage.node[:, None] * steps
                        + steps - step_length[:, None] + jnp.arange(steps)[None]),
                       step_length))
  return (out.cache, out.logits[:, -1], out.values[:, -1]), child


def without_kv(state: NodeState) -> NodeState:
  """The embedding without its KV (what leaves the search: the pool is its working memory)."""
  return state.replace(step_keys=None, step_values=None, path_slot=None)


def make_expand_fn(graphdef, params, config: LMSearchSettings, reward_fn: RewardFn):
  """expand_fn(keys, parent NodeState, action) for `mcts.search`, closing over params."""

  def expand_fn(keys, parent: NodeState, action, lineage: Lineage | None = None):
    model = nnx.merge(graphdef, params)
    child, ended = append_step(config, parent, action)
    full = child.path_length + config.max_step_tokens > config.max_path_tokens
    terminal = ended | full
    if config.reuse_kv:
      if lineage is None:
        raise ValueError("reuse_kv needs the root's prompt KV (root_output with reuse_kv)")
      prefilled, child = _prefill_step(model, config, parent, child, action, lineage)
    else:
      prefilled = None
    value, prior, child = _evaluate(model, config, child, keys, terminal, reward_fn,
                                    prefilled)
    zeros = jnp.zeros_like(value)
    return ExpandOutput(prior_logits=prior, value=value, reward=zeros, terminal=terminal,
                        discount=zeros + 1.0), child

  return expand_fn
