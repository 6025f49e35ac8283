"""The character tokenizer is a real HF tokenizer directory."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxdistill import tokenization as tk


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("chartok"))
  tk.build_char_tokenizer(path)
  return path


def test_round_trip_and_single_token_tags(char_dir):
  tokenizer = AutoTokenizer.from_pretrained(char_dir)
  text = ("<|user|>Numbers: 3 5 7 2\nTarget: 24\n<|assistant|><step>3*7=21</step>"
          "<answer>(3*7)+5-2</answer><|endoftext|>")
  ids = tokenizer.encode(text, add_special_tokens=False)
  assert tokenizer.decode(ids) == text
  for tag in (tk.STEP_START, tk.STEP_END, tk.ANSWER_START, tk.ANSWER_END, tk.EOS):
    assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1
  assert len(tokenizer.encode("12+3", add_special_tokens=False)) == 4
  assert len(tokenizer) == len(tk.SPECIAL_TOKENS) + len(tk.CHARACTERS)


def test_special_ids_and_chat_template(char_dir):
  tokenizer = tk.load_tokenizer(char_dir)
  ids = tk.special_ids(tokenizer)
  assert tokenizer.convert_ids_to_tokens(ids.eos_id) == tk.EOS
  assert tokenizer.convert_ids_to_tokens(ids.pad_id) == tk.PAD
  # the step tags are single tokens of the character tokenizer
  assert len(tokenizer.encode(tk.STEP_END, add_special_tokens=False)) == 1
  prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Numbers: 1 2"}],
                                         tokenize=False, add_generation_prompt=True)
  assert prompt == "<|user|>Numbers: 1 2\n<|assistant|>"


def test_encode_batch_right_pads(char_dir):
  tokenizer = tk.load_tokenizer(char_dir)
  tokens, lengths = tk.encode_batch(tokenizer, ["12", "3+45"])
  np.testing.assert_array_equal(lengths, [2, 4])
  assert tokens.shape == (2, 4) and (tokens[0, 2:] == tokenizer.pad_token_id).all()
  assert tk.decode(tokenizer, tokens[1], lengths[1]) == "3+45"
  with pytest.raises(ValueError, match="max_length"):
    tk.encode_batch(tokenizer, ["12345"], max_length=3)


def test_missing_directory_is_a_clear_error(tmp_path):
  with pytest.raises(tk.TokenizerError, match="does not exist"):
    tk.load_tokenizer(str(tmp_path / "absent"))


def test_char_tokenizer_beside_a_saved_model_keeps_spaces_and_newlines(tmp_path):
  # a warm-start directory holds config.json (model_type qwen2) and the tokenizer files;
  # transformers' AutoTokenizer would load Qwen2Tokenizer there and drop whitespace
  from jaxdistill.models import Qwen2Config, init_model, save_pretrained
  from jaxdistill.tasks import countdown
  built = tk.build_char_tokenizer(str(tmp_path / "tok"))
  config = Qwen2Config(vocab_size=len(built), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True)
  save_pretrained(init_model(config), str(tmp_path / "model"))
  built.save_pretrained(str(tmp_path / "model"))
  loaded = tk.load_tokenizer(str(tmp_path / "model"))
  text = countdown.compact_prompt((3, 10, 13), 17) + "<step>3 + 10 = 13</step>\n"
  assert loaded.encode(text, add_special_tokens=False) == built.encode(
      text, add_special_tokens=False)
  assert tk.decode(loaded, loaded.encode(text, add_special_tokens=False)) == text
