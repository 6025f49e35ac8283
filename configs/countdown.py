"""Countdown presets: `--config configs/countdown.py[:preset]`.

tiny (default, CPU) and smoke use a small Qwen2-architecture model with the character
tokenizer; qwen2.5-0.5b / qwen2.5-1.5b need --config.model.path to a local HF directory.
"""

import ml_collections

PRESETS = ("tiny", "smoke", "qwen2.5-0.5b", "qwen2.5-1.5b")


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """The config of one preset; any field can be overridden on the command line."""
  preset = preset or "tiny"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.workdir = ""  # '' -> runs/<preset>

  c.model = ml_collections.ConfigDict()
  c.model.path = ""  # local Hugging Face directory (qwen presets); '' -> built locally
  c.model.dtype = "float32"
  # architecture of the locally built model (tiny / smoke)
  c.model.hidden_size = 128
  c.model.intermediate_size = 384
  c.model.num_hidden_layers = 4
  c.model.num_attention_heads = 4
  c.model.num_key_value_heads = 2
  c.model.rope_theta = 1e6

  c.task = ml_collections.ConfigDict()
  c.task.data_seed = 0
  c.task.train_size = 20_000
  c.task.test_size = 820
  c.task.prompt = "compact"  # compact (character tokenizer) | chat (instruct tokenizers)

  c.sample = ml_collections.ConfigDict()
  c.sample.num_prompts = 16
  c.sample.max_new_tokens = 128
  c.sample.temperature = 0.8
  c.sample.top_p = 1.0

  if preset == "smoke":
    c.task.train_size, c.task.test_size = 2_000, 64
    c.sample.num_prompts, c.sample.max_new_tokens = 8, 64
  if preset.startswith("qwen"):
    c.model.dtype = "bfloat16"
    c.task.prompt = "chat"
    c.sample.max_new_tokens = 512
  return c
