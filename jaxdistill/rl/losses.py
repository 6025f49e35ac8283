"""Policy, value and KL losses and advantage estimators: pure functions of arrays.

Token arrays are aligned to prediction targets: entry t of `logprobs [B, T]` is
log pi(token t+1 | tokens <= t), `values [B, T]` is V at that same state, and
`mask [B, T]` is 1 exactly where token t+1 was generated (never prompt or padding).

The per-token terms (`*_per_token`) are aggregated by token weights (`token_weights`) that
carry the batch's normaliser: 'sequence' averages each sequence over its generated tokens,
then over the sequences that have any (the reference's form); 'token' averages over every
generated token of the batch (DAPO's token-mean). The normaliser is a count over the whole
batch, psum-ed over devices by the learner, so the update does not depend on how rows fall
on devices. The `*_loss` functions are the same terms aggregated over one local batch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

AGGREGATIONS = ("sequence", "token")


def normaliser(mask, aggregation: str = "sequence"):
  """The local count a mean divides by: sequences with a generated token, or tokens."""
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
  mask = mask.astype(jnp.float32)
  if aggregation == "token":
    return mask.sum()
  return (mask.sum(-1) > 0).astype(jnp.float32).sum()


def token_weights(mask, aggregation: str = "sequence", total=None):
  """Weights [B, T] such that (per_token * weights).sum() is the batch mean of a per-token
  term; total: the normaliser over the whole batch (all devices), default this batch's."""
  mask = mask.astype(jnp.float32)
  if total is None:
    total = normaliser(mask, aggregation)
  if aggregation == "token":
    return mask / jnp.maximum(total, 1.0)
  per_sequence = mask / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
  return per_sequence / jnp.maximum(total, 1.0)


def sequence_mean(per_token, mask):
  """Mean over each sequence's masked tokens, then over sequences with at least one."""
  return (per_token * token_weights(mask).astype(per_token.dtype)).sum()


def cispo_per_token(logprobs, old_logprobs, advantages, eps_high: float = 5.0):
  """CISPO: -sg(min(ratio, eps_high)) * A * log pi; the clipped weight carries no gradient."""
  ratio = jnp.exp(logprobs - old_logprobs)
  weight = jax.lax.stop_gradient(jnp.minimum(ratio, eps_high))
  return -weight * advantages * logprobs


def ppo_per_token(logprobs, old_logprobs, advantages, eps: float = 0.2,
                  eps_high: float | None = None, dual_clip: float = 0.0):
  """PPO-clip: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A); eps_high above eps is
  DAPO's clip-higher. dual_clip c > 1 also bounds the loss of a negative advantage by -c * A
  (dual-clip PPO: a ratio far above 1 on a bad token cannot blow the step up)."""
  eps_high = eps if eps_high is None else eps_high
  ratio = jnp.exp(logprobs - old_logprobs)
  clipped = jnp.clip(ratio, 1.0 - eps, 1.0 + eps_high)
  loss = -jnp.minimum(ratio * advantages, clipped * advantages)
  if dual_clip:
    loss = jnp.where(advantages < 0, jnp.minimum(loss, -dual_clip * advantages), loss)
  return loss


def ppo_clipped(ratio, advantages, eps: float, eps_high: float, dual_clip: float = 0.0):
  """[B, T] bool: tokens whose gradient PPO's clip removes or caps: the ratio outside the
  trust region on the side the advantage pushes, or past dual_clip."""
  out = ((advantages > 0) & (ratio > 1.0 + eps_high)) | ((advantages < 0) & (ratio < 1.0 - eps))
  if dual_clip:
    out = out | ((advantages < 0) & (ratio > dual_clip))
  return out


@dataclasses.dataclass(frozen=True)
class PolicyLoss:
  """A policy loss by name (`POLICY_LOSSES`, the choices of `learner.policy_loss`): its
  per-token term and the tokens its clip acts on (the clip fraction), each reading its
  constants from the learner's settings (`learner.LearnerSettings`)."""

  per_token: Callable  # (logprobs, old_logprobs, advantages, config) -> [B, T]
  clipped: Callable  # (ratio, advantages, config) -> [B, T] bool


def _ppo_upper(config) -> float:
  return config.ppo_eps_high or config.ppo_eps  # 0: symmetric


# a new policy loss joins by an entry here (and its name in validation's choices)
POLICY_LOSSES = {
    "cispo": PolicyLoss(
        per_token=lambda logprobs, old, advantages, c: cispo_per_token(
            logprobs, old, advantages, c.eps_high),
        clipped=lambda ratio, advantages, c: ratio > c.eps_high),
    "ppo": PolicyLoss(
        per_token=lambda logprobs, old, advantages, c: ppo_per_token(
            logprobs, old, advantages, c.ppo_eps, _ppo_upper(c), c.dual_clip),
        clipped=lambda ratio, advantages, c: ppo_clipped(
            ratio, advantages, c.ppo_eps, _ppo_upper(c), c.dual_clip)),
}


def kl_k3_per_token(logprobs, ref_logprobs):
  """k3 estimator of KL(pi || ref) on sampled tokens: exp(r) - r - 1, r = log ref - log pi."""
  log_ratio = ref_logprobs - logprobs
  return jnp.exp(log_ratio) - log_ratio - 1.0


def cispo_loss(logprobs, old_logprobs, advantages, mask, eps_high: float = 5.0):
  """CISPO over one batch (see `cispo_per_token`)."""
  return sequence_mean(cispo_per_token(logprobs, old_logprobs, advantages, eps_high), mask)


def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, eps: float = 0.2):
  """PPO-clip over one batch: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)."""
  return sequence_mean(ppo_per_token(logprobs, old_logprobs, advantages, eps), mask)


def value_loss(values, returns, mask):
  """Squared error of the value head against its targets."""
  return sequence_mean(jnp.square(values - returns), mask)


def kl_k3(logprobs, ref_logprobs, mask):
  """k3 estimator of KL(pi || ref) over one batch."""
  return sequence_mean(kl_k3_per_token(logprobs, ref_logprobs), mask)


def reward_minus_value(rewards, old_values, mask):
  """Reference advantage: A_t = R - V_old(s_t) on generated tokens (0 elsewhere)."""
  return (rewards[:, None] - old_values) * mask


def gae(rewards, old_values, mask, gamma: float = 1.0, lam: float = 0.95):
  """GAE(gamma, lambda) with the sequence reward at its last generated token.

  Returns (advantages, returns) [B, T]; the value after the last token is 0 (episode end).
  """
  mask = mask.astype(old_values.dtype)
  last = jnp.cumsum(mask[:, ::-1], axis=-1)[:, ::-1] == 1.0  # last generated position
  step_rewards = jnp.where(last & (mask > 0), rewards[:, None], 0.0)
  next_values = jnp.concatenate([old_values[:, 1:], jnp.zeros_like(old_values[:, :1])], -1)
  next_values = jnp.where(last, 0.0, next_values)
  deltas = (step_rewards + gamma * next_values - old_values) * mask

  def backward(carry, x):
    delta, m = x
    advantage = delta + gamma * lam * carry * m
    return advantage * m + carry * (1 - m), advantage * m

  _, advantages = jax.lax.scan(backward, jnp.zeros_like(rewards), (deltas.T[::-1], mask.T[::-1]))
  advantages = advantages[::-1].T
  return advantages, (advantages + old_values) * mask


def group_normalized(rewards, group_size: int, eps: float = 1e-6, std: bool = True):
  """GRPO advantages [B]: rewards standardised within consecutive groups of group_size;
  std=False: only centred (mean-only, as Dr. GRPO and DeepSearch: a group whose rewards
  barely differ is not blown up to unit scale)."""
  groups = rewards.reshape(-1, group_size)
  centred = groups - groups.mean(-1, keepdims=True)
  if std:
    centred = centred / (groups.std(-1, keepdims=True) + eps)
  return centred.reshape(rewards.shape)
