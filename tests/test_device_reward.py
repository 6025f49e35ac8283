"""The Countdown reward inside the program (jaxdistill.tasks.countdown_device): equal to the
Python verifier, exact in its rounding, refusing problems it cannot grade exactly, and
leaving no host callback in the programs that use it."""

import re
from fractions import Fraction

import jax
import numpy as np
import pytest

from jaxdistill import tokenization
from jaxdistill.bench import device_reward
from jaxdistill.tasks import countdown, countdown_device

CALLBACK = re.compile(r"custom_call[^\n]*callback")


@pytest.fixture(scope="module")
def problems():
  return countdown.generate(60, seed=4, count=4)


@pytest.mark.parametrize("kind,count", [("char", 1500), ("qwen", 800)])
def test_equal_to_the_python_verifier(kind, count, problems, tmp_path, request):
  """Seeded completions of every kind the bench uses (hard cases, solutions, edited
  solutions, random expressions in answer tags, random text, random token ids): the device
  reward equals the verifier's float32 bit for bit, sparse and dense (with the reference's
  malformed reward, so that malformed and missing answers differ)."""
  if kind == "char":
    tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "char"))
  else:
    tokenizer = tokenization.load_tokenizer(request.getfixturevalue("qwen_tokenizer_dir"))
  task = countdown.Countdown(numbers=4, malformed_reward=-0.9)
  texts = task.reward_cases(problems, count, seed=5)
  rows = [tokenizer.encode(t, add_special_tokens=False) for t, _ in texts]
  indices = [i for _, i in texts]
  rows += device_reward.random_token_rows(tokenizer, 200, 40, seed=6)
  indices += list(range(200))
  indices = [i % len(problems) for i in indices]
  for dense in (False, True):
    python, device = device_reward.compare(task, tokenizer, problems, rows, indices,
                                           dense=dense, widths=(64, 8192))
    bad = np.flatnonzero(python.view(np.uint32) != device.view(np.uint32))
    shown = [(texts[i][0][:80] if i < len(texts) else rows[i][:10], python[i], device[i])
             for i in bad[:3]]
    assert bad.size == 0, (dense, shown)
    assert (python == 1.0).sum() > count // 20  # solutions are among them
    if dense:
      assert {-1.0, np.float32(-0.9)} <= set(python.tolist())
      assert ((python > -0.9) & (python < 1.0)).sum() > count // 40  # graded near misses


def test_division_rounds_as_python_does():
  """float32(float64(p / q)) for |p| <= q < 2**31, against Python's exact Fraction -> float
  -> numpy float32 (the host reward's path), including q near 2**31 and ties."""
  rng = np.random.default_rng(0)
  q = np.concatenate([rng.integers(1, 2 ** 31 - 1, 3000), rng.integers(1, 1000, 1000),
                      [1, 2, 3, 2 ** 31 - 1, 2 ** 30, 2 ** 24 + 1, 2 ** 25 + 3]])
  p = np.minimum((rng.random(q.size) * 2 - 1) * q, q).astype(np.int64)
  p[:5] = [0, q[1], -q[2], 1, -1]
  # values whose float64 lands on a float32 tie: rounding once to float32 would differ
  twice = [(1015021628, 2030043135), (1031798845, 2063597567), (1048576062, 2097151999),
           (1065353279, 2130706431)]
  for a, b in twice:
    direct = min((np.nextafter(np.float32(a / b), np.float32(s)) for s in (0, a / b, 2)),
                 key=lambda c: abs(Fraction(float(c)) - Fraction(a, b)))
    assert direct != np.float32(a / b)
  p = np.concatenate([p, [a for a, _ in twice], [-a for a, _ in twice]])
  q = np.concatenate([q, [b for _, b in twice] * 2])
  expected = np.asarray([float(Fraction(int(a), int(b))) for a, b in zip(p, q)], np.float32)
  got = np.asarray(jax.jit(countdown_device._exact_float32)(p.astype(np.int32),
                                                           q.astype(np.int32)))
  np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_problems_too_large_stay_on_the_host(tmp_path):
  """A problem whose arithmetic could overflow int32 is refused by the device tables, and
  the reward then falls back to the host; generated problems all fit."""
  from jaxdistill.tasks import rewards
  big = countdown.Problem(numbers=(100, 99, 98, 97, 96, 95), target=999_983)
  with pytest.raises(countdown_device.NotExact, match="too large"):
    countdown_device.device_tables([big])
  tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "char"))
  task = countdown.Countdown(numbers=6)
  assert rewards.task_reward_fn(task, tokenizer, [big], dense=True).device is None
  fits = countdown.generate(300, seed=1, count=4)
  assert rewards.task_reward_fn(task, tokenizer, fits, dense=True).device is not None
  assert max(countdown_device.exact_bound(p.numbers, p.target) for p in fits) < 2 ** 31


@pytest.mark.parametrize("algo", ["mcts_distill", "cispo"])
def test_no_host_callback_in_the_training_program(algo):
  """The tiny preset's training iteration, as a run builds it, calls no host function: the
  compile cache can keep it. Graded on the host, the same program has callbacks (the check
  finds them)."""
  from jaxdistill.bench import collectives
  config = collectives.tiny_config(algo, 1, True)
  text = collectives.lowered_iteration(config, 8).as_text()
  assert not CALLBACK.search(text), CALLBACK.search(text).group(0)
  if algo == "mcts_distill":
    host = collectives.lowered_iteration(config, 8, device_rewards=False).as_text()
    assert CALLBACK.search(host)


def test_a_task_that_grades_its_own_way_keeps_the_host(tmp_path):
  """A Countdown subclass with its own `reward` must not inherit Countdown's device form
  (it would grade what the subclass does not)."""
  from jaxdistill.tasks import rewards

  class Lenient(countdown.Countdown):
    def reward(self, completion, problem, dense):
      return 1.0

  tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "char"))
  problems = countdown.generate(3, seed=1, count=4)
  assert Lenient().device_reward(tokenizer, True) is None
  assert rewards.task_reward_fn(Lenient(), tokenizer, problems, dense=True).device is None
  assert rewards.task_reward_fn(countdown.Countdown(), tokenizer, problems).device is not None


def test_no_host_callback_in_the_evaluation_search(tmp_path):
  """The test-time search program (`evaluate.searched_answers`) takes the device reward's
  problem tables as arguments and calls no host function."""
  import dataclasses

  from flax import nnx

  from jaxdistill import evaluate, settings
  from jaxdistill.warmstart import initial_model
  from jaxdistill.configs import countdown as presets
  config = presets.get_config("smoke")
  model, tokenizer = initial_model.load_model_and_tokenizer(config, str(tmp_path))
  spec = settings.iteration(config, tokenizer, "</step>", model.config.vocab_size)
  task = countdown.Countdown(numbers=config.task.numbers)
  graphdef, params = nnx.split(model)
  run, _ = evaluate._search_program(graphdef, dataclasses.replace(spec.search, targets="path"),
                                    spec.rollout, task, tokenizer, True)
  problems = countdown.generate(2, seed=2, count=config.task.numbers)
  tables = task.device_reward(tokenizer, True).tables(problems)
  tokens, lengths = evaluate.encode_prompts(task, tokenizer, problems, config.task.prompt,
                                            config.task.prompt_width)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(np.arange(2))
  ids = np.arange(2, dtype=np.int32)
  text = run.lower(params, tokens, lengths, ids, keys, tables).as_text()
  assert not CALLBACK.search(text)
  host = run.lower(params, tokens, lengths, ids, keys, None).as_text()
  assert CALLBACK.search(host)
