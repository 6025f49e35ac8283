"""Warm start: the loss sees only solution tokens; the result is cached and reused."""

import numpy as np
import pytest
import jax.numpy as jnp

from settings_for_tests import sft_config
from jaxdistill import tokenization
from jaxdistill.warmstart import sft
from jaxdistill.models import Qwen2Config, init_model
from jaxdistill.tasks import countdown


def test_mask_covers_exactly_the_solution_and_eos(tmp_path):
  tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "tok"))
  problems = countdown.generate(5, seed=3)
  tokens, masks = sft.build_examples(countdown.Countdown(), tokenizer, problems, 112)
  eos = tokenization.special_ids(tokenizer).eos_id
  for row, p in enumerate(problems):
    targets = tokens[row, 1:][masks[row] > 0]
    text = tokenization.decode(tokenizer, targets)
    assert text == countdown.solution_steps(p.numbers, p.target) + tokenization.EOS
    assert targets[-1] == eos
    prompt = countdown.compact_prompt(p.numbers, p.target)
    assert tokenization.decode(tokenizer, tokens[row, :len(tokenizer.encode(
        prompt, add_special_tokens=False))]) == prompt


def _tiny(tmp_path, layers: int):
  """The character tokenizer and a tiny architecture over its vocabulary."""
  tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "tok"))
  return tokenizer, Qwen2Config(vocab_size=len(tokenizer), hidden_size=32,
                                intermediate_size=64, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=2,
                                tie_word_embeddings=True)


def test_warm_start_lowers_the_loss_and_is_reused(tmp_path):
  tokenizer, config = _tiny(tmp_path, layers=2)
  problems = countdown.generate(64, seed=4)
  settings = sft_config(steps=30, batch_size=16, learning_rate=3e-3, sequence_length=112)
  _, first_loss = sft.train_sft(init_model(config), tokenizer, countdown.Countdown(), problems,
                                sft_config(steps=1, batch_size=16, sequence_length=112),
                                progress=False)
  model = sft.warm_start(init_model(config), tokenizer, countdown.Countdown(), problems, settings,
                         str(tmp_path / "ws"), progress=False)
  _, trained_loss = sft.train_sft(model, tokenizer, countdown.Countdown(), problems,
                                  sft_config(steps=1, batch_size=16, learning_rate=0.0,
                                                sequence_length=112), progress=False)
  assert trained_loss < 0.8 * first_loss
  again = sft.warm_start(init_model(config, seed=9), tokenizer, countdown.Countdown(), problems,
                         settings,
                         str(tmp_path / "ws"), progress=False)
  tokens = jnp.arange(20, dtype=jnp.int32).reshape(2, 10) % len(tokenizer)
  np.testing.assert_array_equal(np.asarray(again(tokens).logits),
                                np.asarray(model(tokens).logits))


def test_a_cache_made_with_other_settings_is_not_reused_nor_overwritten(tmp_path, capsys):
  """A shared cache keeps the warm start it holds: one made with other settings goes beside
  it (in a settings-<digest> directory), and each is reused by the settings that made it."""
  tokenizer, config = _tiny(tmp_path, layers=1)
  problems = countdown.generate(16, seed=4)
  first = sft_config(steps=2, batch_size=4, learning_rate=1e-2, sequence_length=112)
  second = sft_config(steps=3, batch_size=4, learning_rate=1e-2, sequence_length=112)
  start = lambda settings: sft.warm_start(init_model(config, seed=9), tokenizer,
                                          countdown.Countdown(), problems, settings,
                                          str(tmp_path / "ws"), progress=False)
  a = start(first)
  kept = (tmp_path / "ws" / "model.safetensors").read_bytes()
  capsys.readouterr()
  b = start(second)
  out = capsys.readouterr().out
  assert "other settings (steps: 2 -> 3)" in out and "kept" in out
  assert (tmp_path / "ws" / "model.safetensors").read_bytes() == kept
  tokens = jnp.arange(20, dtype=jnp.int32).reshape(2, 10) % len(tokenizer)
  logits = lambda model: np.asarray(model(tokens).logits)
  assert not np.allclose(logits(a), logits(b))
  for settings, model in ((first, a), (second, b)):  # each read back, nothing trained
    again = start(settings)
    assert "reusing" in capsys.readouterr().out
    np.testing.assert_array_equal(logits(again), logits(model))
  assert len([p for p in (tmp_path / "ws").iterdir() if p.name.startswith("settings-")]) == 1


def test_an_example_longer_than_the_sequence_is_refused_not_cut(tmp_path):
  """A cut example would teach answers with no EOS; the error says what length is needed."""
  tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "tok"))
  problems = countdown.generate(200, seed=3, count=4)
  longest = max(len(tokenizer.encode(countdown.compact_prompt(p.numbers, p.target)
                                     + countdown.solution_steps(p.numbers, p.target),
                                     add_special_tokens=False)) + 1 for p in problems)
  sft.build_examples(countdown.Countdown(), tokenizer, problems, longest - 1)  # exactly fits
  with pytest.raises(ValueError, match=f"sft.sequence_length >= {longest - 1}"):
    sft.build_examples(countdown.Countdown(), tokenizer, problems, longest - 2)
