"""Losses against hand-computed values and the pure, shardable update step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from settings_for_tests import learner_config as preset_learner_config
from jaxdistill.models import Qwen2Config, init_model
from jaxdistill.rl import learner, losses


def learner_config(**changes):
  """Update settings for the batches below, whose log-probs are taken at temperature 1."""
  return preset_learner_config(**({"temperature": 1.0} | changes))

MASK = jnp.array([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], jnp.float32)


def _policy(theta, actions):
  """log pi(actions) for a tiny softmax policy with logits theta [T, A]."""
  return jnp.take_along_axis(jax.nn.log_softmax(theta, -1), actions[:, None], -1)[:, 0][None]


def test_sequence_mean_by_hand():
  x = jnp.array([[9.0, 1.0, 2.0, 3.0, 9.0], [9.0, 9.0, 4.0, 4.0, 4.0]])
  assert float(losses.sequence_mean(x, MASK)) == pytest.approx((2.0 + 4.0) / 2)
  empty = jnp.zeros((1, 5))
  assert float(losses.sequence_mean(jnp.ones((1, 5)), empty)) == 0.0


def test_cispo_gradient_equals_reinforce_at_ratio_one():
  theta = jax.random.normal(jax.random.key(0), (5, 7))
  actions = jnp.array([1, 3, 0, 6, 2])
  advantages = jnp.array([[0.5, -1.0, 2.0, 0.3, 1.0]])
  mask = jnp.array([[1, 1, 1, 1, 0]], jnp.float32)
  old = jax.lax.stop_gradient(_policy(theta, actions))
  cispo = jax.grad(lambda t: losses.cispo_loss(_policy(t, actions), old, advantages, mask))(theta)
  reinforce = jax.grad(lambda t: losses.sequence_mean(-advantages * _policy(t, actions),
                                                      mask))(theta)
  np.testing.assert_allclose(cispo, reinforce, atol=1e-6)
  assert np.abs(np.asarray(cispo)).max() > 1e-3


def test_cispo_caps_the_weight_and_passes_no_gradient_through_it():
  logp = jnp.array([[-1.0]])
  old = jnp.array([[-4.0]])  # ratio e^3 ~ 20 > 5
  adv, mask = jnp.array([[2.0]]), jnp.array([[1.0]])
  assert float(losses.cispo_loss(logp, old, adv, mask)) == pytest.approx(-5.0 * 2.0 * -1.0)
  grad = jax.grad(lambda l: losses.cispo_loss(l, old, adv, mask))(logp)
  assert float(grad[0, 0]) == pytest.approx(-5.0 * 2.0)


def test_ppo_clip_gradient_is_zero_outside_the_trust_region():
  mask = jnp.ones((1, 1))
  grad = lambda logp, old, adv: float(jax.grad(lambda l: losses.ppo_clip_loss(
      l, jnp.array([[old]]), jnp.array([[adv]]), mask, 0.2))(jnp.array([[logp]]))[0, 0])
  assert grad(np.log(1.5), 0.0, 1.0) == 0.0  # ratio 1.5 > 1.2, A > 0
  assert grad(np.log(0.5), 0.0, -1.0) == 0.0  # ratio 0.5 < 0.8, A < 0
  assert grad(np.log(1.1), 0.0, 1.0) == pytest.approx(-1.1)  # inside: -ratio * A
  assert grad(np.log(0.5), 0.0, 1.0) == pytest.approx(-0.5)  # pessimistic side unclipped


def test_clip_higher_and_dual_clip_by_hand():
  """ppo_eps_high widens only the upper side (DAPO); dual_clip c bounds a negative
  advantage's loss at -c * A however far the ratio has run; clipped_tokens counts both."""
  per_token = lambda ratio, adv, **kw: float(losses.ppo_per_token(
      jnp.log(jnp.array(ratio)), jnp.array(0.0), jnp.array(adv), 0.2, **kw))
  assert per_token(1.25, 1.0) == pytest.approx(-1.2)  # clipped at 1 + eps
  assert per_token(1.25, 1.0, eps_high=0.28) == pytest.approx(-1.25)  # inside 1 + eps_high
  assert per_token(0.7, -1.0, eps_high=0.28) == pytest.approx(0.8)  # lower side unchanged
  assert per_token(5.0, -1.0) == pytest.approx(5.0)  # unbounded without the dual clip
  assert per_token(5.0, -1.0, dual_clip=3.0) == pytest.approx(3.0)
  assert per_token(2.0, -1.0, dual_clip=3.0) == pytest.approx(2.0)  # below c: unchanged
  ratio, adv = jnp.array([1.25, 1.25, 0.7, 5.0, 1.0]), jnp.array([1.0, -1.0, -1.0, -1.0, 1.0])
  import types
  settings = types.SimpleNamespace(ppo_eps=0.2, ppo_eps_high=0.0, dual_clip=3.0, eps_high=1.2)
  clipped = lambda name: losses.POLICY_LOSSES[name].clipped(ratio, adv, settings)
  np.testing.assert_array_equal(clipped("ppo"), [True, False, True, True, False])
  np.testing.assert_array_equal(clipped("cispo"), [True, True, False, True, False])


def test_a_policy_loss_and_an_advantage_join_by_a_registry_entry(monkeypatch):
  """The config offers what the registries hold: a new entry is a valid
  learner.policy_loss / learner.advantage, with no other change."""
  from jaxdistill import validation
  from jaxdistill.configs import countdown
  from jaxdistill.rl import batch
  config = countdown.get_config("smoke")
  config.learner.policy_loss, config.learner.advantage = "reinforce", "reward"
  assert len(validation.problems(config)) == 2
  monkeypatch.setitem(losses.POLICY_LOSSES, "reinforce", losses.PolicyLoss(
      per_token=lambda logprobs, old, advantages, c: -advantages * logprobs,
      clipped=lambda ratio, advantages, c: jnp.zeros_like(ratio, bool)))
  monkeypatch.setitem(batch.ADVANTAGES, "reward", batch.Advantage(
      lambda rewards, mask, group_size, values: rewards[:, None] * mask,
      needs_values=False, grouped=False))
  assert validation.problems(config) == []


def test_masked_tokens_change_nothing():
  rng = np.random.RandomState(0)
  logp, old, adv, ret, ref, values = (jnp.asarray(rng.randn(2, 5), jnp.float32) for _ in range(6))
  junk = jnp.where(MASK > 0, 0.0, 1e6)
  for fn, args in [(losses.cispo_loss, (logp, old, adv)), (losses.ppo_clip_loss, (logp, old, adv)),
                   (losses.value_loss, (values, ret)), (losses.kl_k3, (logp, ref))]:
    clean = fn(*args, MASK)
    dirty = fn(*(a + junk for a in args), MASK)
    assert float(clean) == pytest.approx(float(dirty), rel=1e-6)


def test_kl_is_zero_when_policy_equals_reference_and_positive_otherwise():
  logp = jnp.log(jnp.array([[0.2, 0.5, 0.3, 0.9, 0.1]]))
  mask = jnp.ones((1, 5))
  assert float(losses.kl_k3(logp, logp, mask)) == 0.0
  assert float(losses.kl_k3(logp, logp - 0.3, mask)) > 0.0


def test_advantage_estimators():
  values = jnp.array([[0.0, 0.2, -0.1, 0.4, 0.0], [0.0, 0.0, 0.3, 0.3, 0.5]])
  rewards = jnp.array([1.0, -1.0])
  plain = losses.reward_minus_value(rewards, values, MASK)
  np.testing.assert_allclose(plain, (rewards[:, None] - values) * MASK)
  advantages, returns = losses.gae(rewards, values, MASK, gamma=1.0, lam=1.0)
  np.testing.assert_allclose(advantages, plain, atol=1e-6)  # GAE(1, 1) telescopes to R - V
  np.testing.assert_allclose(returns, rewards[:, None] * MASK, atol=1e-6)
  advantages, _ = losses.gae(rewards, values, MASK, gamma=1.0, lam=0.0)  # one-step TD
  np.testing.assert_allclose(advantages[0, 1:4], [-0.2 + -0.1, 0.4 + 0.1, 1.0 - 0.4], atol=1e-6)
  group = losses.group_normalized(jnp.array([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0]), 4)
  np.testing.assert_allclose(group[:4], [1.0, -1.0, -1.0, 1.0], atol=1e-4)
  np.testing.assert_allclose(group[4:], 0.0, atol=1e-6)


CONFIG = Qwen2Config(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)


def _batch(rows=8, length=12, seed=0, graphdef=None, params=None):
  rng = np.random.RandomState(seed)
  tokens = jnp.asarray(rng.randint(0, CONFIG.vocab_size, (rows, length + 1)), jnp.int32)
  mask = np.zeros((rows, length), np.float32)
  for r in range(rows):
    start = rng.randint(2, 6)
    mask[r, start:rng.randint(start + 1, length + 1)] = 1
  logp, _ = learner.sequence_logprobs(graphdef, params, tokens)
  return learner.LearnerBatch(
      tokens=tokens, mask=jnp.asarray(mask),
      advantages=jnp.asarray(rng.randn(rows, length), jnp.float32),
      returns=jnp.asarray(rng.uniform(-1, 1, (rows, length)), jnp.float32),
      old_logprobs=logp, ref_logprobs=logp - 0.1)


def _setup(config=learner_config(learning_rate=1e-2)):
  graphdef, params = nnx.split(init_model(CONFIG, seed=0))
  optimizer = learner.make_optimizer(config)
  state = learner.init_state(params, optimizer, jax.random.key(0))
  return graphdef, optimizer, state, config


def _one_and_eight(optimizer, config, rows=8):
  graphdef, _, state, _ = _setup(config)
  state = learner.init_state(state.params, optimizer, jax.random.key(0))
  batch = _batch(rows=rows, graphdef=graphdef, params=state.params)
  run = lambda axis: lambda s, b: learner.update(s, b, graphdef=graphdef, optimizer=optimizer,
                                                 config=config, axis_name=axis)
  single = jax.jit(run(None))(state, batch)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = jax.jit(jax.shard_map(run("data"), mesh=mesh, in_specs=(P(), P("data")),
                                  out_specs=(P(), P())))
  many = sharded(state, jax.device_put(batch, NamedSharding(mesh, P("data"))))
  return state, single, many


def test_eight_devices_equal_one_device():
  """Same global batch: same loss, gradient norm and updated params on 8 devices and 1."""
  config = learner_config(learning_rate=1e-2)
  # SGD after the clip: the update is linear in the averaged gradient, so params must agree
  # elementwise. (With Adam the first step is lr * g / (|g| + eps): for entries with g near
  # 0 it turns fp32 rounding of another reduction order into a visible fraction of lr.)
  sgd = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.sgd(1.0))
  state, (single, single_metrics), (many, many_metrics) = _one_and_eight(sgd, config)
  assert float(many_metrics["loss"]) == pytest.approx(float(single_metrics["loss"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(many.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-8)
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(single.params)))
  assert moved > 1e-4 and int(single.step) == 1
  # the default optimizer (AdamW): loss and gradient norm agree as well
  adamw = learner.make_optimizer(config)
  _, (_, single_metrics), (_, many_metrics) = _one_and_eight(adamw, config)
  # value_target_var is the whole batch's spread, not a mean of the devices' own spreads
  for key in ("loss", "grad_norm", "kl", "value_loss", "value_target_var"):
    assert float(many_metrics[key]) == pytest.approx(float(single_metrics[key]), rel=1e-5)
  batch = _batch(graphdef=nnx.graphdef(init_model(CONFIG, seed=0)), params=state.params)
  mask, returns = np.asarray(batch.mask), np.asarray(batch.returns)
  per_row = lambda x: ((x * mask).sum(-1) / mask.sum(-1)).mean()  # every row has tokens
  expected = (per_row(returns ** 2) - per_row(returns) ** 2) * 8 / 7  # unbiased over 8 rows
  assert float(single_metrics["value_target_var"]) == pytest.approx(expected, rel=1e-4)


def test_the_value_head_can_have_its_own_learning_rate():
  """Adam's first step moves each weight by about its rate: 1e-3 in the value head, 1e-5 in
  the rest (the trunk included); a value rate of 0 or equal to the rate changes nothing."""
  graphdef, _, state, _ = _setup()
  batch = _batch(graphdef=graphdef, params=state.params)

  def largest_moves(config):  # (value head, everything else)
    optimizer = learner.make_optimizer(config)
    start = learner.init_state(state.params, optimizer, jax.random.key(0))
    new, _ = learner.update(start, batch, graphdef=graphdef, optimizer=optimizer,
                            config=config)
    moves = {"value": 0.0, "policy": 0.0}
    for (path, old), new_leaf in zip(jax.tree_util.tree_leaves_with_path(state.params),
                                     jax.tree.leaves(new.params)):
      group = "value" if "value_head" in jax.tree_util.keystr(path) else "policy"
      moves[group] = max(moves[group], float(jnp.abs(new_leaf - old).max()))
    return moves, new.params

  # (up to fp32 rounding of weights near 1: an ulp is 1.2e-7, about 1% of 1e-5)
  split, _ = largest_moves(learner_config(learning_rate=1e-5, value_learning_rate=1e-3))
  assert 5e-4 < split["value"] <= 1.02e-3 and 5e-6 < split["policy"] <= 1.02e-5
  same, default = largest_moves(learner_config(learning_rate=1e-5))
  assert same["value"] <= 1.02e-5
  _, equal = largest_moves(learner_config(learning_rate=1e-5, value_learning_rate=1e-5))
  for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(equal)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_loss_skips_the_update():
  graphdef, optimizer, state, config = _setup()
  batch = _batch(graphdef=graphdef, params=state.params)
  batch = batch.replace(advantages=batch.advantages.at[0, 5].set(jnp.nan))
  batch = batch.replace(mask=batch.mask.at[0, 5].set(1.0))
  new_state, metrics = learner.update(state, batch, graphdef=graphdef, optimizer=optimizer,
                                      config=config)
  assert int(metrics["skipped"]) == 1 and int(new_state.step) == 0
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_several_epochs_move_the_ratio_and_ppo_clips():
  config = learner_config(learning_rate=3e-2, policy_loss="ppo", epochs=4,
                                 minibatches=2, clip_norm=10.0)
  graphdef, optimizer, state, _ = _setup(config)
  batch = _batch(graphdef=graphdef, params=state.params)
  new_state, metrics = learner.update(state, batch, graphdef=graphdef, optimizer=optimizer,
                                      config=config)
  assert int(new_state.step) == 8
  assert abs(float(metrics["ratio"]) - 1.0) > 1e-3  # later minibatches are off-policy
  logp, _ = learner.sequence_logprobs(graphdef, new_state.params, batch.tokens)
  ratio = np.asarray(jnp.exp(logp - batch.old_logprobs))[np.asarray(batch.mask) > 0]
  assert (np.abs(ratio - 1.0) > 0.2).any()  # the policy left the trust region somewhere...
  # ...and there the clipped objective has no gradient pushing it further out
  grads = jax.grad(lambda l: losses.ppo_clip_loss(l, batch.old_logprobs, batch.advantages,
                                                  batch.mask, 0.2))(logp)
  outside = ((np.asarray(jnp.exp(logp - batch.old_logprobs)) > 1.2) &
             (np.asarray(batch.advantages) > 0) & (np.asarray(batch.mask) > 0))
  assert outside.any() and (np.asarray(grads)[outside] == 0).all()


def test_chunked_logprobs_equal_unchunked_values_and_gradients():
  """The learner's log-probs taken a few positions at a time (here 5 chunks of 5 of 24
  positions, the last padded) equal the ones from all positions' logits at once, values and
  gradients, at a sampling temperature (fp32, 1e-6)."""
  graphdef, _, state, _ = _setup()
  tokens = _batch(rows=2, graphdef=graphdef, params=state.params).tokens  # [2, 13]
  weights = jax.random.normal(jax.random.key(3), (2, 12))

  def score(params, chunk):
    logp, _ = learner.sequence_logprobs(graphdef, params, tokens, temperature=0.7,
                                        chunk_size=chunk, with_values=False)
    return (logp * weights).sum(), logp

  (_, whole), whole_grads = jax.value_and_grad(score, has_aux=True)(state.params, 0)
  (_, chunked), chunked_grads = jax.value_and_grad(score, has_aux=True)(state.params, 5)
  model = nnx.merge(graphdef, state.params)
  logits = model(tokens[:, :-1]).logits / 0.7  # the plain [B, T, V] computation
  direct = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(whole), np.asarray(direct), atol=1e-6)
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-6)
  # gradients: the chunks sum the positions' contributions in another order, so large
  # entries (up to ~6 here, where an fp32 ulp is 4.8e-7) agree to 1e-6 relative
  for a, b in zip(jax.tree.leaves(whole_grads), jax.tree.leaves(chunked_grads)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(whole_grads)) > 1e-3


def test_rematerialised_layers_give_the_same_loss_and_gradients():
  """learner.remat recomputes each layer in the backward pass: same numbers, less memory."""
  graphdef, _, state, config = _setup()
  batch = _batch(graphdef=graphdef, params=state.params)
  grads = {remat: learner.gradients(state.params, graphdef, batch,
                                    dataclasses.replace(config, remat=remat))
           for remat in (False, True)}
  assert float(grads[True][1]["loss"]) == pytest.approx(float(grads[False][1]["loss"]),
                                                        rel=1e-6)
  for a, b in zip(jax.tree.leaves(grads[False][0]), jax.tree.leaves(grads[True][0])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_two_epochs_move_the_ratio_and_count_clipped_tokens():
  """With the behaviour log-probs given, one epoch scores ratio 1 everywhere and clips
  nothing; in a second epoch over the same rows the ratio has left 1 and the clipped tokens
  are counted, for both policy losses."""
  for policy_loss, cap in (("ppo", {"ppo_eps": 0.01}), ("cispo", {"eps_high": 1.001})):
    metrics = {}
    for epochs in (1, 2):
      config = learner_config(learning_rate=1e-2, policy_loss=policy_loss,
                                     epochs=epochs, clip_norm=10.0, **cap)
      graphdef, optimizer, state, _ = _setup(config)
      batch = _batch(graphdef=graphdef, params=state.params)
      _, metrics[epochs] = learner.update(state, batch, graphdef=graphdef,
                                          optimizer=optimizer, config=config)
    assert float(metrics[1]["ratio"]) == pytest.approx(1.0, abs=1e-6)
    assert float(metrics[1]["clip_fraction"]) == 0.0
    assert abs(float(metrics[2]["ratio"]) - 1.0) > 1e-3, policy_loss
    assert 0.0 < float(metrics[2]["clip_fraction"]) < 1.0, policy_loss


@pytest.mark.parametrize("aggregation", ["sequence", "token"])
def test_rows_without_tokens_on_some_devices_change_nothing(aggregation):
  """Global normalisation: 8 rows of which 3 hold no tokens (tree targets leave such rows)
  give the same update on 8 devices, one row each, as on one device."""
  config = learner_config(learning_rate=1e-2, loss_aggregation=aggregation)
  sgd = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.sgd(1.0))
  graphdef, _, state, _ = _setup(config)
  batch = _batch(graphdef=graphdef, params=state.params)
  batch = batch.replace(mask=batch.mask.at[jnp.array([1, 2, 6])].set(0.0))
  state = learner.init_state(state.params, sgd, jax.random.key(0))
  run = lambda axis: lambda s, b: learner.update(s, b, graphdef=graphdef, optimizer=sgd,
                                                 config=config, axis_name=axis)
  single, single_metrics = jax.jit(run(None))(state, batch)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  many, many_metrics = jax.jit(jax.shard_map(run("data"), mesh=mesh, in_specs=(P(), P("data")),
                                             out_specs=(P(), P())))(
      state, jax.device_put(batch, NamedSharding(mesh, P("data"))))
  for key in ("loss", "policy_loss", "value_loss", "kl", "ratio", "grad_norm"):
    assert float(many_metrics[key]) == pytest.approx(float(single_metrics[key]), rel=1e-5), key
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(many.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-8)
  # and the empty rows add nothing: the same update as the 5 rows alone on one device
  kept = jnp.array([0, 3, 4, 5, 7])
  alone, _ = jax.jit(run(None))(state, jax.tree.map(lambda x: x[kept], batch))
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(alone.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-8)


def test_eight_devices_give_the_same_gradients():
  graphdef, _, state, config = _setup()
  batch = _batch(graphdef=graphdef, params=state.params)
  grad = lambda axis: lambda p, b: learner.gradients(p, graphdef, b, config, axis)[0]
  single = jax.jit(grad(None))(state.params, batch)
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = jax.jit(jax.shard_map(grad("data"), mesh=mesh, in_specs=(P(), P("data")),
                                  out_specs=P()))
  many = sharded(state.params, jax.device_put(batch, NamedSharding(mesh, P("data"))))
  # A gradient is a sum over the batch, here summed in another order (a psum of eight partial
  # sums), so float32 rounding bounds its error by eps times the magnitudes summed, which the
  # leaf's scale stands for, not by the element's own value: an embedding gradient of 2.3e-5
  # in a leaf of 0.24 differed by 1.1e-8 on an Intel Xeon (4.6e-8 of the leaf's scale; the
  # worst leaf there is 4.5e-7). A missing psum or a wrong count would be off by O(1).
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(many)):
    scale = float(np.abs(np.asarray(a)).max())
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5 * scale)


def test_value_trunk_grad_false_keeps_value_loss_out_of_the_trunk():
  """With value_trunk_grad=False the value loss moves the value head only; by default it
  also reaches the shared trunk. Policy and KL gradients are the same either way."""
  graphdef, _, state, _ = _setup()
  batch = _batch(graphdef=graphdef, params=state.params)
  value_only = lambda detach: learner_config(kl_coef=0.0, value_coef=1.0,
                                                    value_trunk_grad=not detach)
  grads = lambda config, b: learner.gradients(state.params, graphdef, b, config)[0]
  no_policy = batch.replace(advantages=jnp.zeros_like(batch.advantages))
  is_head = lambda path: "value_head" in jax.tree_util.keystr(path)
  for detach in (False, True):
    g = grads(value_only(detach), no_policy)
    head = [jnp.abs(x).max() for p, x in jax.tree_util.tree_leaves_with_path(g) if is_head(p)]
    trunk = [jnp.abs(x).max() for p, x in jax.tree_util.tree_leaves_with_path(g)
             if not is_head(p)]
    assert float(max(head)) > 1e-4
    if detach:
      assert float(max(trunk)) == 0.0
    else:
      assert float(max(trunk)) > 1e-6
  # the policy part of the gradient does not depend on the option
  policy_only = lambda detach: learner_config(kl_coef=0.05, value_coef=0.0,
                                                     value_trunk_grad=not detach)
  for a, b in zip(jax.tree.leaves(grads(policy_only(False), batch)),
                  jax.tree.leaves(grads(policy_only(True), batch))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_group_advantages_standardised_or_only_centred():
  """Two groups of 3: GRPO's standardised advantages, and the mean-only ones (std=False)."""
  from jaxdistill.rl import losses
  rewards = jnp.asarray([1.0, 0.0, 0.0, 0.5, 0.5, 0.5])
  centred = [2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0]
  np.testing.assert_allclose(losses.group_normalized(rewards, 3, std=False), centred,
                             atol=1e-7)
  std = np.std([1.0, 0.0, 0.0])
  np.testing.assert_allclose(losses.group_normalized(rewards, 3),
                             [c / (std + 1e-6) for c in centred[:3]] + [0.0] * 3, rtol=1e-5)


def test_several_minibatches_log_the_ratio_and_the_clip_over_their_steps():
  """Four minibatches: the first step's ratio is 1 by construction, the later ones' leave
  it; the metrics carry the last step's deviation from 1, the largest over the batch's
  steps, and the clip's share over all of them."""
  config = learner_config(learning_rate=3e-2, policy_loss="ppo", ppo_eps=0.01,
                          minibatches=4, clip_norm=10.0)
  graphdef, optimizer, state, _ = _setup(config)
  batch = _batch(graphdef=graphdef, params=state.params)
  _, metrics = learner.update(state, batch, graphdef=graphdef, optimizer=optimizer,
                              config=config)
  assert 0.0 < float(metrics["ratio_deviation"]) <= float(metrics["ratio_deviation_max"])
  assert 0.0 < float(metrics["clip_fraction_mean"]) < 1.0
  one = learner_config(learning_rate=3e-2, policy_loss="ppo")  # one step: no such metrics
  _, single = learner.update(state, batch, graphdef=graphdef, optimizer=learner.make_optimizer(
      one), config=one)
  assert not {"ratio_deviation", "clip_fraction_mean"} & set(single)


def test_value_coef_zero_leaves_the_value_head_out():
  """value_coef=0: no value loss in the metrics and no gradient on the value head (the
  trunk's gradient is the policy loss's alone)."""
  config = learner_config(learning_rate=1e-2, value_coef=0.0)
  graphdef, _, state, _ = _setup(config)
  batch = _batch(graphdef=graphdef, params=state.params)
  grads, metrics = learner.gradients(state.params, graphdef, batch, config)
  assert not {"value_loss", "value_target_var"} & set(metrics)
  head = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if any(getattr(k, "key", None) == "value_head" for k in path)]
  assert head and all(float(jnp.abs(g).max()) == 0.0 for g in head)
  other = dataclasses.replace(config, value_coef=1.0)
  _, with_value = learner.gradients(state.params, graphdef, batch, other)
  assert float(with_value["value_loss"]) > 0.0


def test_minibatches_are_the_same_on_eight_devices_and_one():
  """2 epochs x 4 minibatches of 32 rows: each minibatch is a set of global rows whatever
  the device count (4 rows per device, one in each), so 8 devices take the same 8 steps."""
  config = learner_config(learning_rate=1e-2, policy_loss="ppo", epochs=2, minibatches=4)
  sgd = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.sgd(1.0))
  state, (single, single_metrics), (many, many_metrics) = _one_and_eight(sgd, config, rows=32)
  assert int(single.step) == int(many.step) == 8
  for key in ("loss", "ratio_deviation", "ratio_deviation_max", "clip_fraction_mean"):
    assert float(many_metrics[key]) == pytest.approx(float(single_metrics[key]), rel=1e-4,
                                                     abs=1e-7), key
  assert float(single_metrics["ratio_deviation"]) > 1e-4  # the steps moved the policy
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(many.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-7)
