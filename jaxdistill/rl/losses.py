"""Policy, value and KL losses and advantage estimators: pure functions of arrays.

Token arrays are aligned to prediction targets: entry t of `logprobs [B, T]` is
log pi(token t+1 | tokens <= t), `values [B, T]` is V at that same state, and
`mask [B, T]` is 1 exactly where token t+1 was generated (never prompt or padding).
Every loss is averaged per sequence over its generated tokens, then over the sequences
that have any.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sequence_mean(per_token, mask):
  """Mean over each sequence's masked tokens, then over sequences with at least one."""
  mask = mask.astype(per_token.dtype)
  counts = mask.sum(-1)
  per_sequence = (per_token * mask).sum(-1) / jnp.maximum(counts, 1.0)
  has_tokens = (counts > 0).astype(per_token.dtype)
  return (per_sequence * has_tokens).sum() / jnp.maximum(has_tokens.sum(), 1.0)


def cispo_loss(logprobs, old_logprobs, advantages, mask, eps_high: float = 5.0):
  """CISPO: -sg(min(ratio, eps_high)) * A * log pi; the clipped weight carries no gradient."""
  ratio = jnp.exp(logprobs - old_logprobs)
  weight = jax.lax.stop_gradient(jnp.minimum(ratio, eps_high))
  return sequence_mean(-weight * advantages * logprobs, mask)


def ppo_clip_loss(logprobs, old_logprobs, advantages, mask, eps: float = 0.2):
  """PPO-clip: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)."""
  ratio = jnp.exp(logprobs - old_logprobs)
  clipped = jnp.clip(ratio, 1.0 - eps, 1.0 + eps)
  return sequence_mean(-jnp.minimum(ratio * advantages, clipped * advantages), mask)


def value_loss(values, returns, mask):
  """Squared error of the value head against its targets."""
  return sequence_mean(jnp.square(values - returns), mask)


def kl_k3(logprobs, ref_logprobs, mask):
  """k3 estimator of KL(pi || ref) on sampled tokens: exp(r) - r - 1, r = log ref - log pi."""
  log_ratio = ref_logprobs - logprobs
  return sequence_mean(jnp.exp(log_ratio) - log_ratio - 1.0, mask)


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


def group_normalized(rewards, group_size: int, eps: float = 1e-6):
  """GRPO advantages [B]: rewards standardised within consecutive groups of group_size."""
  groups = rewards.reshape(-1, group_size)
  normalized = (groups - groups.mean(-1, keepdims=True)) / (groups.std(-1, keepdims=True) + eps)
  return normalized.reshape(rewards.shape)
