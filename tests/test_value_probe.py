"""The value probe: its predictors and scores on data whose answer is known, and the states it
reads off a real model."""

import numpy as np

from jaxdistill.experiments import value_probe


def test_leave_one_out_means_and_weights_by_hand():
  # problem 0: completions 0, 1, 2 with rewards 1, 0, 1; problem 1: completions 3, 4 (0, 0)
  completion = np.array([0, 0, 1, 2, 2, 2, 3, 4])
  problem = np.array([0, 0, 0, 0, 0, 0, 1, 1])
  reward = np.array([1, 1, 0, 1, 1, 1, 0, 0], float)
  np.testing.assert_allclose(value_probe.leave_one_out_means(reward, problem, completion),
                             [0.5, 0.5, 1.0, 0.5, 0.5, 0.5, 0.0, 0.0])
  # rewards that are the problem's (1, 1 | 0, 0): all variance between problems; alternating
  # (1, 0 | 1, 0): none, and the unbiased estimate removes the means' sampling noise, -1
  assert value_probe.problem_variance_share(np.array([1., 1, 0, 0]), np.array([0, 0, 1, 1])) == 1
  assert value_probe.problem_variance_share(np.array([1., 0, 1, 0]),
                                            np.array([0, 0, 1, 1])) == -1
  weight = value_probe.completion_weights(completion, completion != 1)
  np.testing.assert_allclose(weight, [0.5, 0.5, 0, 1 / 3, 1 / 3, 1 / 3, 1, 1])
  assert value_probe.explained_variance(np.full(3, 0.5), np.array([0., 1, 1]), np.ones(3),
                                        constant=0.5) == 0.0
  np.testing.assert_allclose(value_probe.explained_variance(
      np.array([0., 1, 1]), np.array([0., 1, 1]), np.ones(3), constant=0.2), 1.0)


def _synthetic(seed=0, problems=60, samples=4, per=9, hidden=8):
  """States whose feature 0 carries the completion's reward (plus noise) at every state after
  the prompt, and nothing at the prompt; the rewards are independent of the problem."""
  rng = np.random.default_rng(seed)
  rows = problems * samples
  reward = (rng.random(rows) < 0.3).astype(float)
  bucket = np.concatenate([[0], 1 + np.minimum(4 * np.arange(1, per) // per, 3)])
  features = rng.normal(size=(rows, per, hidden))
  features[:, bucket >= 1, 0] += 3.0 * (2 * reward[:, None] - 1)
  return value_probe.States(
      features=features.reshape(-1, hidden).astype(np.float32),
      head=np.full(rows * per, 0.5, np.float32), reward=np.repeat(reward, per),
      completion=np.repeat(np.arange(rows), per),
      problem=np.repeat(np.arange(rows) // samples, per), bucket=np.tile(bucket, rows))


def test_the_probe_finds_value_where_the_states_carry_it_and_nowhere_else():
  states = _synthetic()
  result = value_probe.probe(states, hidden_size=8, multiplier=2, mlp_steps=300)
  ev = result["explained_variance"]
  for name in ("linear", "mlp"):
    for bucket in ("q1", "q2", "q3", "q4"):
      assert ev[name][bucket] > 0.8, (name, bucket, ev[name])
    assert ev[name]["prompt"] < 0.1, ev[name]
  assert ev["problem"]["all"] < 0.05  # the rewards do not depend on the problem
  # the constant head 0.5: hand-computed against the fit half's mean (from the same split)
  held = np.isin(states.problem, np.random.default_rng(0).permutation(60)[30:])
  first = np.unique(states.completion, return_index=True)[1]
  fit_rows = first[~held[first]]
  constant = states.reward[fit_rows].mean()  # each completion weighs 1 over its states
  y = states.reward[first[held[first]]]
  np.testing.assert_allclose(ev["head"]["all"],
                             1 - np.sum((y - 0.5) ** 2) / np.sum((y - constant) ** 2),
                             rtol=1e-6)
  assert result["problems"] == 60 and result["held_out_problems"] == 30
  assert abs(result["solve_rate"] - states.reward[first].mean()) < 1e-12


def test_states_are_the_learner_states_of_real_completions(tmp_path):
  """collect_states on a tiny model: one prompt state per completion, the model's own value
  head read at the prompt's last token (checked against a forward pass of the prompt alone)."""
  import jax.numpy as jnp

  from jaxdistill import evaluate as evaluation
  from jaxdistill import main
  from jaxdistill.configs import countdown as presets
  from jaxdistill.tasks import countdown
  config = presets.apply_overrides(presets.get_config("smoke"), [
      "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
      "rollout.max_completion_tokens=12", "sft.steps=0"])
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  problems, _ = countdown.make_splits(0, 40, 8, count=config.task.numbers)
  states = value_probe.collect_states(config, countdown.Countdown(config.task.numbers), model,
                                      tokenizer, problems[:5], samples=3,
                                      max_states=4)
  completions = np.unique(states.completion)
  assert len(completions) == 15 and (states.bucket == 0).sum() == 15
  assert set(np.unique(states.problem)) == set(range(5))
  assert set(np.unique(states.reward)) <= {0.0, 1.0}
  assert np.isfinite(states.features).all() and states.features.shape[1] == 32
  assert np.bincount(states.completion).max() <= 4
  tokens, lengths = evaluation.encode_prompts(countdown.Countdown(), tokenizer, problems[:5],
                                              config.task.prompt,
                                              config.task.prompt_width)
  out = model(jnp.asarray(tokens))
  expected = np.asarray(out.values)[np.arange(5), lengths - 1]
  got = states.head[states.bucket == 0].reshape(5, 3)
  np.testing.assert_allclose(got, np.repeat(expected[:, None], 3, 1), rtol=1e-4, atol=1e-5)


def test_the_trunk_predictor_learns_what_the_tokens_reveal():
  """Rewards set by the first completion token (one of two ids): a model trained on the value
  loss alone must predict them at every state after that token, and cannot at the prompt."""
  from jaxdistill.models import Qwen2Config, init_model
  model = init_model(Qwen2Config(vocab_size=16, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, rope_theta=1e4,
                                 tie_word_embeddings=True), seed=0)
  rng = np.random.default_rng(0)
  problems, samples, prompt, length = 256, 4, 4, 12
  rows = problems * samples
  tokens = rng.integers(2, 16, (rows, length)).astype(np.int32)
  tokens[:, prompt] = rng.choice([5, 6], rows)
  reward = (tokens[:, prompt] == 6).astype(float)
  positions = np.arange(prompt - 1, length - 1)  # the learner's states
  chosen = positions - (prompt - 1)
  count = length - prompt
  bucket = np.where(chosen == 0, 0, 1 + np.minimum(4 * chosen // count, 3))
  per = len(positions)
  states = value_probe.States(
      features=np.zeros((rows * per, 4), np.float32), head=np.zeros(rows * per, np.float32),
      reward=np.repeat(reward, per), completion=np.repeat(np.arange(rows), per),
      problem=np.repeat(np.arange(rows) // samples, per), bucket=np.tile(bucket, rows),
      position=np.tile(positions, rows), tokens=tokens,
      prompt_length=np.full(rows, prompt), length=np.full(rows, length))
  result = value_probe.probe(states, hidden_size=4, multiplier=2, mlp_steps=100, model=model,
                             trunk_steps=400, trunk_learning_rate=1e-3)
  trunk = result["explained_variance"]["trunk"]
  for bucket_name in ("q1", "q2", "q3", "q4"):
    assert trunk[bucket_name] > 0.5, trunk
  assert trunk["prompt"] < 0.1, trunk
  # the features are all zero: the ridge probe predicts the fit half's mean, explaining nothing
  assert abs(result["explained_variance"]["linear"]["all"]) < 1e-9
