"""Batched generation: prefill, then a `lax.while_loop` decode with per-row stop flags.

Prompts come right-padded with their lengths and are left-aligned inside (so every row
writes the same cache slot each step); positions count real tokens only, so results do
not depend on padding. Randomness is per row (one key per row, folded with the step), so
a row's sample depends only on its own key: the same on 1 device or 8.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.models.qwen2 import KVCache, Qwen2Model
from jaxdistill.stopping import StopString


@chex.dataclass(frozen=True)
class SampleOutput:
  """Generated continuations, padded to max_new_tokens."""

  tokens: jax.Array  # [B, N] int32, pad_id after a row finished
  lengths: jax.Array  # [B] int32: generated tokens, the stop token included
  logprobs: jax.Array  # [B, N] float32 log pi(token) at temperature 1 (0 on padding)
  sample_logprobs: jax.Array  # [B, N] float32 under the sampling distribution (0 if greedy)
  values: jax.Array | None  # [B, N] float32 value head at the state before each token
  #                           (None unless decoded with_values=True)
  finished: jax.Array  # [B] bool: stopped on a stop token (not cut at max_new_tokens)
  prompt_value: jax.Array  # [B] float32 value head at the last prompt token
  # tokens up to and including the one that first completed the stop string (0: never)
  string_end: jax.Array
  # [B, N] float32 entropy of the temperature-1 distribution each token was drawn from
  # (None unless decoded with_entropy=True)
  entropies: jax.Array | None = None


def left_align(tokens, lengths, pad_id: int = 0):
  """Right-padded tokens [B, T] -> left-padded tokens and their mask [B, T]."""
  width = tokens.shape[1]
  shift = width - lengths
  aligned = jax.vmap(jnp.roll)(tokens, shift)
  mask = jnp.arange(width)[None, :] >= shift[:, None]
  return jnp.where(mask, aligned, pad_id), mask


def prefill(model: Qwen2Model, tokens, lengths, num_slots: int, pad_id: int = 0):
  """Run right-padded prompts [B, T] into a fresh cache of `num_slots` slots.

  Returns (cache, logits [B, V] and value [B] at each prompt's last token).
  """
  batch, width = tokens.shape
  aligned, mask = left_align(tokens, lengths, pad_id)
  cache = KVCache.empty(model.config, batch, num_slots, model.dtype)
  out = model(aligned, attention_mask=mask, cache=cache, last_only=True)
  return out.cache, out.logits[:, -1], out.values[:, -1]


def _top_p_filter(logits, temperature, top_p):
  """Mask logits [B, V] outside the smallest set whose probability reaches top_p."""
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(ordered / temperature, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  kept = jnp.where(before < top_p, ordered, jnp.inf)
  threshold = jnp.min(kept, axis=-1, keepdims=True)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def uses_top_p(top_p) -> bool:
  """Whether the nucleus filter must be compiled in: a Python top_p >= 1 leaves it out (a
  traced top_p keeps it). Static on purpose: a `lax.cond` inside the decode loop costs a
  host round trip per token on GPU and splits the loop body's command buffer."""
  return not (isinstance(top_p, (int, float)) and top_p >= 1.0)


def sample_tokens(row_keys, logits, temperature, top_p, filter_top_p: bool = True):
  """One token per row from logits [B, V]: (tokens, logp at T=1, logp under sampling).

  filter_top_p=False skips the nucleus filter (for top_p >= 1; see `uses_top_p`)."""
  safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
  if filter_top_p:
    logits_kept = _top_p_filter(logits, safe_temperature, top_p)
  else:
    logits_kept = logits
  filtered = logits_kept / safe_temperature
  gumbel = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[-1:], logits.dtype))(row_keys)
  greedy = temperature <= 0
  tokens = jnp.where(greedy, jnp.argmax(logits, -1), jnp.argmax(filtered + gumbel, -1))
  pick = lambda lp: jnp.take_along_axis(lp, tokens[:, None], axis=-1)[:, 0]
  logp = pick(jax.nn.log_softmax(logits, axis=-1))
  sample_logp = jnp.where(greedy, 0.0, pick(jax.nn.log_softmax(filtered, axis=-1)))
  return tokens.astype(jnp.int32), logp, sample_logp


def decode(model: Qwen2Model, cache: KVCache, logits, value, row_keys, *, max_new_tokens: int,
           temperature, top_p, stop_ids: tuple[int, ...], pad_id: int,
           filter_top_p: bool | None = None, with_values: bool = False,
           prefix: KVCache | None = None, stop_string: StopString | None = None,
           stop_on_string: bool = True, with_entropy: bool = False) -> SampleOutput:
  """Continue every row from (cache, next-token logits [B, V], value [B]).

  filter_top_p defaults to `uses_top_p(top_p)`; with_values also records the value head
  before each token (the decode then runs the value head at every step). prefix: a cache
  of M rows that groups of B / M consecutive rows continue (see `Qwen2Model.__call__`).
  stop_string: a row also stops after the token that completes it (any tokenization); with
  stop_on_string=False it is only tracked (`string_end`), the row goes on. with_entropy
  also records the entropy of each token's temperature-1 distribution (where the policy
  was uncertain: entropy-guided branching)."""
  batch = logits.shape[0]
  if filter_top_p is None:
    filter_top_p = uses_top_p(top_p)
  stop = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)
  temperature = jnp.asarray(temperature, jnp.float32)
  top_p = jnp.asarray(top_p, jnp.float32)
  grid = lambda dtype: jnp.zeros((batch, max_new_tokens), dtype)
  row = jnp.zeros((batch,), jnp.int32)
  buffers = dict(tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
                 logprobs=grid(jnp.float32), sample_logprobs=grid(jnp.float32), lengths=row)
  if with_values:
    buffers["values"] = grid(jnp.float32)
  if with_entropy:
    buffers["entropies"] = grid(jnp.float32)
  # automaton state of the stop string per row, and where it first completed
  buffers["string_state"] = row
  buffers["string_end"] = row
  if stop_string is not None:
    next_state, fires = jnp.asarray(stop_string.next_state), jnp.asarray(stop_string.fires)
  done = jnp.zeros((batch,), bool)

  def cond(carry):
    step, _, _, _, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, cache, logits, value, done, buffers = carry
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
    token, logp, sample_logp = sample_tokens(step_keys, logits, temperature, top_p,
                                             filter_top_p)
    active = ~done
    token = jnp.where(active, token, pad_id)
    put = lambda buf, x: buf.at[:, step].set(jnp.where(active, x, buf[:, step]))
    new = dict(tokens=token, logprobs=logp, sample_logprobs=sample_logp, values=value)
    if with_entropy:
      # the same log-softmax as sample_tokens' (XLA computes it once for both)
      log_p = jax.nn.log_softmax(logits, axis=-1)
      new["entropies"] = -(jnp.exp(log_p) * log_p).sum(-1).astype(jnp.float32)
    string_state, string_end = buffers.pop("string_state"), buffers.pop("string_end")
    buffers = {name: buf + active.astype(jnp.int32) if name == "lengths" else
               put(buf, new[name]) for name, buf in buffers.items()}
    done = done | (active & jnp.isin(token, stop))
    if stop_string is not None:
      fired = active & fires[token, string_state] & (string_end == 0)
      string_end = jnp.where(fired, step + 1, string_end)
      string_state = jnp.where(active, next_state[token, string_state], string_state)
      if stop_on_string:
        done = done | fired
    buffers |= dict(string_state=string_state, string_end=string_end)
    out = model(token[:, None], attention_mask=active[:, None], cache=cache,
                compute_values=with_values, prefix=prefix)
    value = out.values[:, 0] if with_values else value
    return step + 1, out.cache, out.logits[:, 0], value, done, buffers

  prompt_value = value
  if not with_values:
    value = jnp.zeros_like(logits[:, 0])  # carried but never written
  carry = (jnp.zeros((), jnp.int32), cache, logits, value, done, buffers)
  _, _, _, _, done, buffers = jax.lax.while_loop(cond, body, carry)
  buffers.pop("string_state")
  return SampleOutput(finished=done, values=buffers.pop("values", None),
                      entropies=buffers.pop("entropies", None), prompt_value=prompt_value,
                      **buffers)


def sample_continuations(model: Qwen2Model, prompt_tokens, prompt_lengths, row_keys, *,
                         samples: int = 1, max_new_tokens: int, temperature, top_p,
                         stop_ids: tuple[int, ...], pad_id: int,
                         with_values: bool = False, stop_string: StopString | None = None,
                         stop_on_string: bool = True,
                         with_entropy: bool = False) -> SampleOutput:
  """`samples` continuations of each right-padded prompt [M, T]: rows [M * samples], row r
  continuing prompt r // samples with key row_keys[r].

  With samples > 1 each prompt is prefilled once and its rows attend to that one KV cache,
  keeping only their own new tokens: no repeated prefill, no copies of the prompt's cache,
  and samples-fold less prompt KV read per decoded token.
  """
  options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                 stop_ids=stop_ids, pad_id=pad_id, with_values=with_values,
                 stop_string=stop_string, stop_on_string=stop_on_string,
                 with_entropy=with_entropy)
  if samples == 1:
    num_slots = prompt_tokens.shape[1] + max_new_tokens
    cache, logits, value = prefill(model, prompt_tokens, prompt_lengths, num_slots, pad_id)
    return decode(model, cache, logits, value, row_keys, **options)
  prefix, logits, value = prefill(model, prompt_tokens, prompt_lengths,
                                  prompt_tokens.shape[1], pad_id)
  return continue_prefilled(model, prefix, logits, value, row_keys, samples=samples, **options)


def continue_prefilled(model: Qwen2Model, prefix: KVCache, logits, value, row_keys, *,
                       samples: int, max_new_tokens: int, temperature, top_p,
                       stop_ids: tuple[int, ...], pad_id: int, with_values: bool = False,
                       stop_string: StopString | None = None, stop_on_string: bool = True,
                       with_entropy: bool = False) -> SampleOutput:
  """`samples` continuations of each of M prefilled rows (cache `prefix` of M rows, their
  next-token logits [M, V] and value [M]): rows [M * samples] as `sample_continuations`,
  attending to the prefix's KV (a search node's path, its KV gathered from the tree)."""
  logits, value = jnp.repeat(logits, samples, 0), jnp.repeat(value, samples, 0)
  cache = KVCache.empty(model.config, logits.shape[0], max_new_tokens, model.dtype)
  return decode(model, cache, logits, value, row_keys, max_new_tokens=max_new_tokens,
                temperature=temperature, top_p=top_p, stop_ids=stop_ids, pad_id=pad_id,
                with_values=with_values, prefix=prefix, stop_string=stop_string,
                stop_on_string=stop_on_string, with_entropy=with_entropy)


def concat_completion(prompt_tokens, prompt_lengths, completion, completion_lengths,
                      pad_id: int):
  """Right-padded prompt + completion rows [M, T + N] and their lengths."""
  width = prompt_tokens.shape[1] + completion.shape[1]
  positions = jnp.arange(width)[None]
  offset = positions - prompt_lengths[:, None]
  gathered = jnp.take_along_axis(completion, jnp.clip(offset, 0, completion.shape[1] - 1),
                                 axis=1)
  prompt = jnp.pad(prompt_tokens, ((0, 0), (0, completion.shape[1])), constant_values=pad_id)
  tokens = jnp.where(offset < 0, prompt,
                     jnp.where(offset < completion_lengths[:, None], gathered, pad_id))
  return tokens, prompt_lengths + completion_lengths


def completion_values(prompt_lengths, completion_values, completion_lengths, width: int):
  """Per-token values of completions [M, N] placed where `concat_completion` puts their
  tokens: rows [M, width], 0 on the prompt, past the completion and on padding."""
  positions = jnp.arange(width)[None]
  offset = positions - prompt_lengths[:, None]
  gathered = jnp.take_along_axis(completion_values,
                                 jnp.clip(offset, 0, completion_values.shape[1] - 1), axis=1)
  inside = (offset >= 0) & (offset < completion_lengths[:, None])
  return jnp.where(inside, gathered, jnp.zeros_like(gathered))


def row_keys_from(rng, batch: int):
  """One key per row."""
  return jax.random.split(rng, batch)


def split_per_row(keys, samples: int):
  """keys [M] (typed keys or raw key data) -> [M * samples]: row r's samples take keys
  r * samples ... r * samples + samples - 1, split from keys[r] alone, so a row's samples do
  not depend on which other rows share the batch (or the device)."""
  split = jax.vmap(lambda key: jax.random.split(key, samples))(keys)
  return split.reshape((keys.shape[0] * samples,) + split.shape[2:])


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "stop_ids",
                                             "pad_id", "filter_top_p", "with_values",
                                             "samples", "stop_string"))
def _generate_jit(graphdef, state, prompt_tokens, prompt_lengths, row_keys, temperature,
                  top_p, *, max_new_tokens, stop_ids, pad_id, filter_top_p, with_values,
                  samples, stop_string):
  model = nnx.merge(graphdef, state)
  if not filter_top_p:
    top_p = 1.0  # a Python value: `decode` leaves the nucleus filter out
  return sample_continuations(model, prompt_tokens, prompt_lengths, row_keys, samples=samples,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, stop_ids=stop_ids, pad_id=pad_id,
                              with_values=with_values, stop_string=stop_string)


def generate(model: Qwen2Model, prompt_tokens, prompt_lengths, rng, *, max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, stop_ids=(), pad_id: int = 0,
             row_keys=None, with_values: bool = False, samples: int = 1,
             stop_string: StopString | None = None) -> SampleOutput:
  """Sample continuations of right-padded prompts [B, T] with lengths [B] (jitted).

  temperature 0 is greedy. Compiles once per (shapes, max_new_tokens, stop_ids, pad_id,
  whether top_p < 1, with_values, samples); temperature and top_p values are traced, so
  changing them does not recompile. with_values also returns the value head before each
  token. samples > 1: that many continuations of each prompt (rows [B * samples], one key
  per row), sharing the prompt's prefill (see `sample_continuations`). stop_string: rows
  also stop after the token that completes it (`stopping.stop_for`).
  """
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
  chex.assert_rank(prompt_tokens, 2)
  chex.assert_shape(prompt_lengths, prompt_tokens.shape[:1])
  if row_keys is None:
    row_keys = row_keys_from(rng, prompt_tokens.shape[0] * samples)
  graphdef, state = nnx.split(model)
  return _generate_jit(graphdef, state, prompt_tokens, prompt_lengths, row_keys,
                       jnp.float32(temperature), jnp.float32(top_p),
                       max_new_tokens=int(max_new_tokens),
                       stop_ids=tuple(int(i) for i in stop_ids), pad_id=int(pad_id),
                       filter_top_p=uses_top_p(float(top_p)), with_values=bool(with_values),
                       samples=int(samples), stop_string=stop_string)
