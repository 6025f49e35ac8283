"""Steps end on the stop string `</step>` however it is tokenized: the token that completes
its first occurrence ends the step (and stays in it); a prefix such as `</ste` never does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdistill import stopping, tokenization

STEP_END = tokenization.STEP_END


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, qwen_tokenizer_dir):
  char = tokenization.build_char_tokenizer(str(tmp_path_factory.mktemp("char")))
  return {"char": char, "qwen": tokenization.load_tokenizer(qwen_tokenizer_dir)}


def _pool(tokenizer):
  """Token ids that spell pieces of '</step>' (in several splits), and a few others."""
  pieces = ["</step>", "</step>\n", " </step>", "<step>", "</", "step", ">", ">\n", "<", "/",
            "s", "t", "e", "p", "ste", " ", "\n", "1", "+", "=", "</ste", "ep>"]
  ids = set()
  for piece in pieces:
    ids.update(tokenizer.encode(piece, add_special_tokens=False))
  ids.update(range(40, 60))
  return sorted(ids)


def _first_completion(tokenizer, tokens):
  """Reference: the first i whose decoded prefix tokens[:i + 1] contains '</step>'."""
  for i in range(len(tokens)):
    if STEP_END in tokenization.decode(tokenizer, tokens[:i + 1]):
      return i
  return None


@pytest.mark.parametrize("name", ["char", "qwen"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_tables_stop_exactly_where_the_text_first_contains_the_string(tokenizers, name, data):
  tokenizer = tokenizers[name]
  stop = _stop(tokenizer, name)
  pool = _pool(tokenizer)
  tokens = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=14))
  assert stopping.first_stop(stop, tokens) == _first_completion(tokenizer, tokens)


_STOPS = {}


def _stop(tokenizer, name):
  if name not in _STOPS:  # built once per tokenizer (the Qwen one takes a few seconds)
    _STOPS[name] = stopping.stop_for(tokenizer, STEP_END)
  return _STOPS[name]


def test_qwen_tokenizations_of_the_step_end(tokenizers):
  """`</step>` is three Qwen tokens; the last one ends the step, also when it carries a
  newline; `</ste` and `<step>` never end it."""
  tokenizer, stop = tokenizers["qwen"], _stop(tokenizers["qwen"], "qwen")
  enc = lambda text: tokenizer.encode(text, add_special_tokens=False)
  assert enc(STEP_END) == [522, 9520, 29] and enc(STEP_END + "\n") == [522, 9520, 397]
  for text in ["3 + 4 = 7</step>", "3 + 4 = 7</step>\n<step>", " </step>\n"]:
    tokens = enc(text)
    assert stopping.first_stop(stop, tokens) == len(enc(text.split(STEP_END)[0] + STEP_END)) - 1
  for text in ["3 + 4 = 7</ste", "<step>1 + 1", "</st ep>", "</STEP>"]:
    assert stopping.first_stop(stop, enc(text)) is None


class MarkovModel:
  """A stand-in for the LM in `sampling.decode`: the next token depends only on the last one
  and continues one of a few phrases (as the tokenizer splits them) or starts another."""

  PHRASES = ["</step>", "</step>\n", " </step>", "<step>", "</ste", "1 + 2", "</st ep>"]

  def __init__(self, tokenizer):
    self.vocab = len(tokenizer)
    phrases = [tokenizer.encode(p, add_special_tokens=False) for p in self.PHRASES]
    # and '</step>' spelled with single-character tokens where the vocabulary has them (the
    # character tokenizer has no '<' or '>': there '</step>' is only ever its special token)
    spelled = [tokenizer.convert_tokens_to_ids(c) for c in STEP_END]
    if tokenization.decode(tokenizer, spelled) == STEP_END:
      phrases.append(spelled)
    self.pool = sorted({t for p in phrases for t in p})
    index = {t: i for i, t in enumerate(self.pool)}
    weights = np.zeros((len(self.pool), len(self.pool)))
    for phrase in phrases:
      weights[:, index[phrase[0]]] += 0.3  # start a phrase anywhere
      for a, b in zip(phrase, phrase[1:]):
        weights[index[a], index[b]] += 1.0  # or continue the one the token is in
    self.index = jnp.asarray(np.array([index.get(t, 0) for t in range(self.vocab)]))
    self.logits = jnp.full((len(self.pool), self.vocab), -1e9).at[:, jnp.asarray(self.pool)].set(
        jnp.log(jnp.asarray(weights / weights.sum(-1, keepdims=True))))

  def __call__(self, tokens, *, attention_mask=None, cache=None, compute_values=False,
               prefix=None):
    from jaxdistill.models.qwen2 import ModelOutput
    logits = self.logits[self.index[tokens[:, -1]]][:, None]
    return ModelOutput(logits=logits, values=None, hidden=None, cache=cache)


@pytest.mark.parametrize("name", ["char", "qwen"])
def test_decoding_stops_at_the_token_that_completes_the_string(tokenizers, name):
  """The jitted decode loop: every row stops right after the token completing the first
  '</step>' of its text (spread over several tokens, or one), or runs to max_new_tokens
  without one; '</ste', '<step>' and '</st ep>' never stop a row."""
  from jaxdistill.sampling import decode
  tokenizer = tokenizers[name]
  stop = _stop(tokenizer, name)
  model = MarkovModel(tokenizer)
  rows, new = 64, 12
  start = jnp.full((rows,), model.pool[0], jnp.int32)
  run = jax.jit(lambda keys: decode(model, jnp.zeros((rows,)), model.logits[model.index[start]],
                                    jnp.zeros((rows,)), keys, max_new_tokens=new,
                                    temperature=1.0, top_p=1.0, stop_ids=(), pad_id=0,
                                    stop_string=stop))
  out = jax.device_get(run(jax.random.split(jax.random.key(3), rows)))
  stopped, multi_token, near_misses = 0, 0, 0
  for row in range(rows):
    tokens = out.tokens[row, :out.lengths[row]].tolist()
    text = tokenization.decode(tokenizer, tokens)
    first = _first_completion(tokenizer, tokens)
    if first is None:
      assert out.lengths[row] == new and out.string_end[row] == 0
      near_misses += "</ste" in text or "</st ep>" in text
    else:
      assert first == len(tokens) - 1 and out.string_end[row] == len(tokens)
      assert text.count(STEP_END) == 1 and text.endswith(STEP_END) or STEP_END + "\n" in text
      stopped += 1
      multi_token += STEP_END not in tokenization.decode(tokenizer, tokens[-1:])
    assert (out.tokens[row, out.lengths[row]:] == 0).all()
  assert stopped >= 10, stopped
  if name == "qwen":  # Qwen has no single '</step>' token: every stop spans several tokens
    assert multi_token == stopped
  assert near_misses + sum("</ste" in tokenization.decode(
      tokenizer, out.tokens[r, :out.lengths[r]].tolist()) for r in range(rows)) >= 5
