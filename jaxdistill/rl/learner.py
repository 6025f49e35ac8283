"""TrainState and the pure update step: CISPO (or PPO-clip) + value + k3 KL, AdamW.

`update(state, batch) -> (state, metrics)` is pure: no hidden mutation, optax directly.
Inside `shard_map` over 'data' (axis_name given) each device weighs its local rows by the
normaliser of the whole batch (a psum of counts) and the gradients are psum-ed, so one
device and eight give the same update however rows fall on them (tree targets leave some
rows empty). The policy's log-probs are taken from the final hidden states in chunks of
positions (`Qwen2Model.token_logprobs`), never as [B, T, V] logits, at the temperature the
behaviour policy sampled at; its log-probs (`old_logprobs`) come from the sampler, so with
several epochs or minibatches the ratio departs from 1 and the clip acts.
A non-finite loss, gradient or updated parameter leaves params and optimizer state untouched
and is counted in the metrics (`skipped`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdistill import parallel
from jaxdistill.models.qwen2 import LAYERS
from jaxdistill.rl import losses


@dataclasses.dataclass(frozen=True)
class LearnerSettings:
  """Hyper-parameters of the update (built from the run config by `settings.learner`)."""

  policy_loss: str  # a name of losses.POLICY_LOSSES: cispo | ppo
  eps_high: float  # CISPO weight cap
  ppo_eps: float
  ppo_eps_high: float  # PPO's upper clip (clip-higher); 0: ppo_eps
  dual_clip: float  # PPO dual clip c > 1 for negative advantages; 0: off
  loss_aggregation: str  # sequence | token (see losses.token_weights)
  # the temperature the behaviour policy sampled at; the learner scores at it too
  temperature: float
  logit_chunk: int  # positions whose [*, V] logits exist at once (0: all)
  remat: bool  # recompute each layer in the backward pass (Qwen2Model remat)
  value_coef: float
  # False: the value loss trains the value head only (stop-gradient on the trunk's hidden
  # state), so value regression cannot move the policy's features
  value_trunk_grad: bool
  kl_coef: float
  learning_rate: float
  # the value head's own rate (0: learning_rate). A rate small enough to keep the policy
  # from collapsing barely moves a freshly initialised head (Adam moves each weight by about
  # the rate per update), so its values stay near their start and guide nothing
  value_learning_rate: float
  end_learning_rate: float
  warmup_steps: int
  decay_steps: int  # linear decay to end_learning_rate over this many updates
  weight_decay: float
  clip_norm: float
  epochs: int
  minibatches: int


@chex.dataclass(frozen=True)
class TrainState:
  """Everything the update changes."""

  params: Any  # nnx.State of the model
  opt_state: Any
  step: jax.Array  # [] int32 updates applied
  rng: jax.Array  # key


@chex.dataclass(frozen=True)
class LearnerBatch:
  """Trajectories aligned to prediction targets (see losses.py)."""

  tokens: jax.Array  # [B, T + 1] int32 prompt + generated + pad
  mask: jax.Array  # [B, T] float32: 1 where tokens[:, t + 1] was generated
  advantages: jax.Array  # [B, T] float32
  returns: jax.Array  # [B, T] float32 value targets
  old_logprobs: jax.Array  # [B, T] float32 behaviour policy (the sampler's)
  ref_logprobs: jax.Array | None = None  # [B, T] float32 frozen reference (None: no KL)


def make_optimizer(config: LearnerSettings, square_norm=None) -> optax.GradientTransformation:
  """Global-norm clip, then AdamW with warm-up and linear decay; with a value_learning_rate,
  the value head's parameters get that peak rate (same schedule shape, same clip).
  square_norm: the squared global norm of a tree of gradients, for gradients split over
  devices (`parallel.Fsdp.square_norm`); None: the tree holds whole gradients."""
  def adamw(peak: float):  # the end rate in proportion: end_learning_rate at learning_rate
    end = (config.end_learning_rate if peak == config.learning_rate
           else config.end_learning_rate * peak / config.learning_rate)
    schedule = optax.join_schedules([
        optax.linear_schedule(0.0, peak, max(config.warmup_steps, 1)),
        optax.linear_schedule(peak, end, max(config.decay_steps, 1)),
    ], [max(config.warmup_steps, 0)]) if config.warmup_steps else optax.linear_schedule(
        peak, end, max(config.decay_steps, 1))
    return optax.adamw(schedule, weight_decay=config.weight_decay)

  clip = (optax.clip_by_global_norm(config.clip_norm) if square_norm is None
          else _clip_by_split_norm(config.clip_norm, square_norm))
  if not config.value_learning_rate or config.value_learning_rate == config.learning_rate:
    return optax.chain(clip, adamw(config.learning_rate))
  return optax.chain(clip, optax.multi_transform(
      {"policy": adamw(config.learning_rate), "value": adamw(config.value_learning_rate)},
      _value_head_labels))


def _clip_by_split_norm(max_norm: float, square_norm) -> optax.GradientTransformation:
  """optax.clip_by_global_norm (the same arithmetic and the same empty state, so
  checkpoints do not depend on the layout) with the norm taken over every device's shards."""
  def update(updates, state, params=None):
    del params
    norm = jnp.sqrt(square_norm(updates))
    trigger = norm < max_norm
    clip = lambda t: jax.lax.select(trigger, t, (t / norm.astype(t.dtype)) * max_norm)
    return jax.tree.map(clip, updates), state
  return optax.GradientTransformation(optax.init_empty_state, update)


def _value_head_labels(params):
  """'value' for the value head's parameters, 'policy' for the rest (the trunk included)."""
  def label(path, _):
    return "value" if any(getattr(k, "key", None) == "value_head" for k in path) else "policy"
  return jax.tree_util.tree_map_with_path(label, params)


def init_state(params, optimizer: optax.GradientTransformation, rng) -> TrainState:
  """A fresh TrainState for params (an nnx.State)."""
  return TrainState(params=params, opt_state=optimizer.init(params),
                    step=jnp.zeros((), jnp.int32), rng=rng)


def sequence_logprobs(graphdef, params, tokens, value_trunk_grad: bool = True, *,
                      temperature: float = 1.0, chunk_size: int = 1024,
                      with_values: bool = True, remat: bool = False, layer_weights=None):
  """(log pi_T of each next token [B, T], values [B, T] or None) for tokens [B, T + 1], pi_T
  the policy at `temperature`; log-probs in chunks of chunk_size positions (no [B, T, V]).

  value_trunk_grad=False: the values' gradient stops at the final hidden state.
  layer_weights: see `Qwen2Model.__call__` (params' layers are shards it gathers)."""
  model = nnx.merge(graphdef, params)
  out = model(tokens[:, :-1], compute_logits=False,
              compute_values=with_values and value_trunk_grad, remat=remat,
              layer_weights=layer_weights)
  taken = model.token_logprobs(out.hidden, tokens[:, 1:], temperature=temperature,
                               chunk_size=chunk_size)
  if not with_values or value_trunk_grad:
    return taken, out.values
  return taken, model.value_head(jax.lax.stop_gradient(out.hidden))


def sequence_values(graphdef, params, tokens):
  """The value head at every state [B, T] of tokens [B, T + 1] (no logits at all)."""
  model = nnx.merge(graphdef, params)
  return model(tokens[:, :-1], compute_logits=False).values


def loss_fn(params, graphdef, batch: LearnerBatch, config: LearnerSettings, weights,
            token_weights, layer_weights=None):
  """This device's share of the total loss, and of each metric: weighted sums whose sum over
  devices is the batch mean (weights: the loss's aggregation; token_weights: per token)."""
  trains_value = config.value_coef > 0  # else no value forward, loss or gradient at all
  logprobs, values = sequence_logprobs(graphdef, params, batch.tokens, config.value_trunk_grad,
                                       temperature=config.temperature,
                                       chunk_size=config.logit_chunk, remat=config.remat,
                                       with_values=trains_value, layer_weights=layer_weights)
  total = lambda per_token, w=weights: (per_token * w).sum()
  if config.policy_loss not in losses.POLICY_LOSSES:
    raise ValueError(f"policy_loss must be one of {', '.join(losses.POLICY_LOSSES)}, got "
                     f"{config.policy_loss!r}")
  policy_loss = losses.POLICY_LOSSES[config.policy_loss]
  policy = total(policy_loss.per_token(logprobs, batch.old_logprobs, batch.advantages, config))
  kl = jnp.zeros((), jnp.float32)
  if batch.ref_logprobs is not None:
    kl = total(losses.kl_k3_per_token(logprobs, batch.ref_logprobs))
  if trains_value:
    value = total(jnp.square(values - batch.returns))
    loss = policy + config.value_coef * value + config.kl_coef * kl
  else:
    loss = policy + config.kl_coef * kl
  ratio = jax.lax.stop_gradient(jnp.exp(logprobs - batch.old_logprobs))
  clipped = policy_loss.clipped(ratio, batch.advantages, config)
  metrics = {"loss": loss, "policy_loss": policy, "kl": kl,
             "ratio": total(ratio, token_weights),
             "clip_fraction": total(clipped.astype(jnp.float32), token_weights)}
  if trains_value:
    metrics |= {"value_loss": value, "return_mean": total(batch.returns),
                "return_square_mean": total(jnp.square(batch.returns))}
  if config.epochs * config.minibatches > 1:  # the ratio leaves 1 after the first step
    metrics["ratio_deviation"] = total(jnp.abs(ratio - 1.0), token_weights)
  return loss, metrics


def _as_device_varying(tree, axis_name: str):
  """Mark replicated values as per-device. Under shard_map, the gradient with respect to a
  replicated input is already psum-ed over the axis (the transpose of the implicit
  broadcast); made varying, each device gets its own gradient and one psum adds them."""
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(tree, _axes(axis_name), to="varying")
  return jax.lax.pvary(tree, _axes(axis_name))


def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def gradients(params, graphdef, batch: LearnerBatch, config: LearnerSettings,
              axis_name: str | tuple | None = None, fsdp=None):
  """(gradients, metrics) of the batch's loss; inside shard_map the batch is every device's
  rows together: counts and gradients are summed over `axis_name` (the axes rows are split
  over). fsdp (`parallel.Fsdp`): params are this device's shards, gathered whole for the
  loss; their gradients come back reduce-scattered over its axis and are summed over the
  others."""
  total = (lambda x: jax.lax.psum(x, axis_name)) if axis_name else (lambda x: x)
  counts = total(jnp.stack([losses.normaliser(batch.mask, config.loss_aggregation),
                            losses.normaliser(batch.mask, "token"),
                            losses.normaliser(batch.mask, "sequence")]))
  weights = losses.token_weights(batch.mask, config.loss_aggregation, counts[0])
  token_weights = losses.token_weights(batch.mask, "token", counts[1])
  if axis_name is not None:
    params = _as_device_varying(params, axis_name)
  if fsdp is None:
    read = lambda p: (p, None)
  elif config.remat:  # the layer loop gathers one layer at a time
    read = lambda p: fsdp.by_layer(p, LAYERS)
  else:
    read = lambda p: (fsdp.gather(p), None)

  def loss_of(p, *args):
    whole, layer_weights = read(p)
    return loss_fn(whole, *args, layer_weights)

  (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(
      params, graphdef, batch, config, weights, token_weights)
  metrics = total(metrics)
  if fsdp is None:
    grads = total(grads)
  elif axis_name is not None:  # the gather's transpose summed them over 'fsdp' already
    others = tuple(a for a in _axes(axis_name) if a != parallel.FSDP)
    grads = jax.lax.psum(grads, others) if others else grads
  # the returns' variance over the whole batch's sequences, unbiased: about the value_loss of
  # a head that knows their mean and nothing else (the batch's own mean would flatter such a
  # head by 1/n with n sequences), so that 1 - value_loss / value_target_var is the value
  # head's explained variance
  if "return_mean" not in metrics:
    return grads, metrics
  mean, square_mean = metrics.pop("return_mean"), metrics.pop("return_square_mean")
  sequences = counts[2]
  spread = jnp.maximum(square_mean - mean ** 2, 0.0) * sequences / jnp.maximum(sequences - 1, 1)
  return grads, metrics | {"value_target_var": spread}


def _axes(axis_name) -> tuple:
  return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def update(state: TrainState, batch: LearnerBatch, *, graphdef, optimizer, config: LearnerSettings,
           axis_name: str | tuple | None = None, fsdp=None):
  """epochs x minibatches gradient steps on batch; returns (state, metrics of the last).
  fsdp (`parallel.Fsdp`): state holds this device's shards of params and optimizer state
  (the optimizer built with its `square_norm`)."""
  rows = batch.tokens.shape[0]
  if rows % config.minibatches:
    raise ValueError(f"{rows} rows do not split into {config.minibatches} minibatches")
  size = rows // config.minibatches

  def step(carry, indices):
    params, opt_state, skipped = carry
    minibatch = jax.tree.map(lambda x: x[indices], batch)
    grads, metrics = gradients(params, graphdef, minibatch, config, axis_name, fsdp)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # the step must be finite end to end: loss, gradients and the params it produces
    finite = _all_finite(grads) & jnp.isfinite(metrics["loss"]) & _all_finite(new_params)
    if fsdp is not None:  # every shard's check: the whole group keeps or skips the step
      finite = fsdp.all_true(finite)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    norm = (optax.tree.norm(grads) if fsdp is None
            else jnp.sqrt(fsdp.square_norm(grads)))
    metrics = metrics | {"grad_norm": norm}
    return (keep(new_params, params), keep(new_opt_state, opt_state),
            skipped + (~finite).astype(jnp.int32)), metrics

  rng, shuffle = jax.random.split(state.rng)
  keys = jax.random.split(shuffle, config.epochs)
  # minibatch m holds the rows whose index is m modulo minibatches. With every device's rows
  # a multiple of minibatches (validation checks it), device d's row i is global row
  # d * rows + i with the same residue, so any device count trains the same minibatches
  # (8 devices = 1) with no exchange of rows; a replicated key shuffles their order per epoch.
  # (A method's rows come grouped by prompt: minibatches that divide a prompt's rows take
  # an equal share of every prompt's.)
  members = jnp.arange(rows).reshape(size, config.minibatches).T  # [minibatches, size]
  order = jnp.concatenate([
      members[jax.random.permutation(k, config.minibatches)] if config.minibatches > 1
      else members for k in keys])
  (params, opt_state, skipped), metrics = jax.lax.scan(
      step, (state.params, state.opt_state, jnp.zeros((), jnp.int32)), order)
  updates = config.epochs * config.minibatches
  # the last step's metrics; with several steps, the clip's share over all of them too
  # (the first step's ratio is 1 by construction, so its clip acts only after it)
  extra = ({"clip_fraction_mean": metrics["clip_fraction"].mean(),
            "ratio_deviation_max": metrics["ratio_deviation"].max()} if updates > 1 else {})
  metrics = jax.tree.map(lambda x: x[-1], metrics) | extra | {"skipped": skipped}
  applied = updates - skipped
  return state.replace(params=params, opt_state=opt_state, step=state.step + applied,
                       rng=rng), metrics
