"""Tokenizers: load any Hugging Face tokenizer directory, or build the small character one.

The character tokenizer of the CPU preset is a real HF tokenizer directory (tokenizer.json
+ tokenizer_config.json with a chat template), so the same code path that serves Qwen's
tokenizer serves it: `AutoTokenizer.from_pretrained(dir)` loads it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import string

from jaxdistill.errors import UsageError
from jaxdistill.tasks.format import (ANSWER_END, ANSWER_START, ASSISTANT, STEP_END,  # noqa
                                     STEP_START, USER)

EOS, PAD = "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = (PAD, EOS, STEP_START, STEP_END, ANSWER_START, ANSWER_END, USER, ASSISTANT)
CHARACTERS = (string.digits + "+-*/()=" + " \n" + string.ascii_lowercase + "NTU:,.?")

CHAR_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}" + USER + "{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "{{ m['content'] }}" + EOS + "\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}")


class TokenizerError(UsageError, ValueError):
  """A tokenizer directory that cannot be loaded; the message is one line."""


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Token ids the sampler needs (a step's end is a stop string: `jaxdistill.stopping`)."""

  pad_id: int
  eos_id: int


def build_char_tokenizer(path: str):
  """Build the character-level tokenizer, save it as an HF directory at `path`, return it."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
  core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
  core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
  core.decoder = decoders.Fuse()  # characters join back without spaces
  core.add_special_tokens(list(SPECIAL_TOKENS))
  tokenizer = PreTrainedTokenizerFast(
      tokenizer_object=core, eos_token=EOS, pad_token=PAD, unk_token=PAD,
      additional_special_tokens=[STEP_START, STEP_END, ANSWER_START, ANSWER_END, USER,
                                 ASSISTANT],
      chat_template=CHAR_CHAT_TEMPLATE, padding_side="right", clean_up_tokenization_spaces=False)
  # written to a private directory, then renamed into place: several processes (multi-host)
  # may build the same tokenizer at once, and none may read another's half-written file
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  private = tempfile.mkdtemp(prefix=".tokenizer-", dir=parent)
  try:
    tokenizer.save_pretrained(private)
    try:
      os.rename(private, path)
    except OSError:  # another process got there first (or an old copy exists): replace files
      os.makedirs(path, exist_ok=True)
      for name in os.listdir(private):
        os.replace(os.path.join(private, name), os.path.join(path, name))
  finally:
    shutil.rmtree(private, ignore_errors=True)
  return load_tokenizer(path)


def _generic_tokenizer(path: str):
  """A tokenizer saved as the generic fast tokenizer (the character tokenizer), loaded as
  exactly that, or None for any other directory.

  AutoTokenizer would pick the model's own tokenizer class from a config.json beside it
  (Qwen2Tokenizer for a saved tiny model), which rebuilds the pre-tokenizer and silently
  drops spaces and newlines from the character tokenizer's input.
  """
  import json

  from transformers import PreTrainedTokenizerFast
  config_path = os.path.join(path, "tokenizer_config.json")
  if not os.path.exists(config_path):
    return None
  with open(config_path) as f:
    tokenizer_class = json.load(f).get("tokenizer_class")
  if tokenizer_class not in ("TokenizersBackend", "PreTrainedTokenizerFast"):
    return None
  return PreTrainedTokenizerFast.from_pretrained(path)


def _auto_tokenizer(path: str):
  # imported only here: AutoTokenizer's import brings torch when it is installed (about 4 s
  # per process on a CPU), which the character tokenizer of the CPU presets has no use for
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path)


def load_tokenizer(path: str):
  """Load an HF tokenizer directory (Qwen's, or one written by build_char_tokenizer)."""
  if not os.path.isdir(path):
    raise TokenizerError(f"tokenizer directory {path!r} does not exist")
  try:
    tokenizer = _generic_tokenizer(path) or _auto_tokenizer(path)
  except (OSError, ValueError, TypeError) as e:
    raise TokenizerError(f"cannot load a tokenizer from {path!r}: "
                         f"{str(e).splitlines()[0]}") from None
  if tokenizer.pad_token_id is None:
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer


def special_ids(tokenizer) -> SpecialIds:
  """Pad and EOS ids of a tokenizer."""
  eos = tokenizer.eos_token_id
  if eos is None:
    raise TokenizerError("the tokenizer has no EOS token")
  return SpecialIds(pad_id=int(tokenizer.pad_token_id), eos_id=int(eos))


def encode_batch(tokenizer, texts: list[str], max_length: int | None = None):
  """Right-padded int32 ids [B, T] and lengths [B] (numpy), no special tokens added."""
  import numpy as np
  ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
  if max_length is not None:
    too_long = [len(x) for x in ids if len(x) > max_length]
    if too_long:
      raise ValueError(f"a prompt has {max(too_long)} tokens, more than max_length={max_length}")
  width = max_length or max(len(x) for x in ids)
  tokens = np.full((len(ids), width), tokenizer.pad_token_id, np.int32)
  for row, x in enumerate(ids):
    tokens[row, :len(x)] = x
  return tokens, np.asarray([len(x) for x in ids], np.int32)


def decode(tokenizer, ids, length: int | None = None) -> str:
  """Text of ids (first `length` of them), special tokens kept (tags are special tokens)."""
  ids = [int(i) for i in (ids[:length] if length is not None else ids)]
  return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
