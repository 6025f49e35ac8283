"""Stop strings inside jit: generation ends after the token that completes a string such as
`</step>`, however the tokenizer splits it.

A KMP automaton over the characters of the stop string (state = length of the longest
prefix of the string that the text read so far ends with) is lifted to tokens once per
tokenizer: `next_state[v, s]` is the state after reading token v's decoded text from state s,
and `fires[v, s]` says whether the string is completed inside that text. The token that
completes it ends the step and stays in it, even when it carries more text (`>` + newline
is one Qwen token). With the character tokenizer `</step>` is a single token and fires from
every state; the same tables serve any Hugging Face tokenizer.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _failure(pattern: str) -> list[int]:
  """KMP failure function: failure[i] = length of the longest proper border of pattern[:i+1]."""
  failure = [0] * len(pattern)
  k = 0
  for i in range(1, len(pattern)):
    while k and pattern[i] != pattern[k]:
      k = failure[k - 1]
    if pattern[i] == pattern[k]:
      k += 1
    failure[i] = k
  return failure


def _advance(pattern: str, failure: list[int], state: int, char: str) -> int:
  """Automaton state after reading `char` in `state` (len(pattern) = matched)."""
  while state and char != pattern[state]:
    state = failure[state - 1]
  return state + 1 if char == pattern[state] else 0


@dataclasses.dataclass(frozen=True, eq=False)
class StopString:
  """Token-level tables of one stop string's automaton (hashed by identity: static config)."""

  text: str
  next_state: np.ndarray  # [V, S] int32, S = len(text) states (0 .. len - 1)
  fires: np.ndarray  # [V, S] bool: reading the token from that state completes the string


def build_stop_string(text: str, token_texts: list[str]) -> StopString:
  """Tables for `text` over a vocabulary whose token v decodes to token_texts[v]."""
  if not text:
    raise ValueError("a stop string must not be empty")
  failure = _failure(text)
  states = len(text)
  vocab = len(token_texts)
  next_state = np.zeros((vocab, states), np.int32)
  fires = np.zeros((vocab, states), bool)
  alphabet = set(text)
  for token, piece in enumerate(token_texts):
    if not alphabet.intersection(piece):  # resets every state and never fires
      continue
    for start in range(states):
      state = start
      for char in piece:
        state = _advance(text, failure, state, char)
        if state == states:
          fires[token, start] = True
          break
      next_state[token, start] = 0 if fires[token, start] else state
  return StopString(text=text, next_state=next_state, fires=fires)


def single_token(token_id: int, vocab_size: int) -> StopString:
  """A 'string' that is one token id (synthetic vocabularies with a step-end token)."""
  next_state = np.zeros((vocab_size, 1), np.int32)
  fires = np.zeros((vocab_size, 1), bool)
  fires[token_id, 0] = True
  return StopString(text=f"<token {token_id}>", next_state=next_state, fires=fires)


def token_texts(tokenizer) -> list[str]:
  """Decoded text of every token id (special tokens as their text)."""
  vocab = len(tokenizer)
  return tokenizer.batch_decode([[i] for i in range(vocab)], skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)


def stop_for(tokenizer, text: str, vocab_size: int | None = None) -> StopString:
  """The stop-string tables of `text` for a tokenizer, padded to the model's vocabulary
  (ids past the tokenizer's never fire)."""
  texts = token_texts(tokenizer)
  if vocab_size is not None and vocab_size > len(texts):
    texts += [""] * (vocab_size - len(texts))
  return build_stop_string(text, texts)


def first_stop(stop: StopString, tokens: np.ndarray) -> int | None:
  """Index of the token that completes the first occurrence (reference, in Python)."""
  state = 0
  for i, token in enumerate(tokens):
    if stop.fires[token, state]:
      return i
    state = int(stop.next_state[token, state])
  return None
