"""The learner batch of a method's trajectories: mask, advantages, returns and the
log-probs the loss compares against."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxdistill.rl import learner, losses, rollouts


@dataclasses.dataclass(frozen=True)
class Advantage:
  """An advantage estimator by name (`ADVANTAGES`): grouped ones compare each row with the
  other rows of its prompt (cispo's group of samples); the others need the value head's
  estimate of every state (`needs_values`: one more forward pass in the assembly)."""

  fn: Callable  # (rewards [B], mask [B, T], group_size, old_values [B, T] or None) -> [B, T]
  needs_values: bool
  grouped: bool


# a new estimator joins by an entry here; `learner.advantage` offers the ungrouped ones
# (methods that sample groups pick a grouped one themselves: `Method.advantage`)
ADVANTAGES = {
    "group": Advantage(lambda rewards, mask, group_size, _: losses.group_normalized(
        rewards, group_size, std=True)[:, None] * mask, needs_values=False, grouped=True),
    "group_mean": Advantage(lambda rewards, mask, group_size, _: losses.group_normalized(
        rewards, group_size, std=False)[:, None] * mask, needs_values=False, grouped=True),
    "reward_minus_value": Advantage(lambda rewards, mask, _, values: losses.reward_minus_value(
        rewards, values, mask), needs_values=True, grouped=False),
    "gae": Advantage(lambda rewards, mask, _, values: losses.gae(rewards, values, mask)[0],
                     needs_values=True, grouped=False),
}


def assemble_batch(graphdef, params, ref_params, traj: rollouts.Trajectories, advantage: str,
                   group_size: int, config: learner.LearnerSettings,
                   ref_layer_weights=None) -> learner.LearnerBatch:
  """The learner batch of trajectories: mask, advantages and returns, the behaviour
  log-probs the sampler recorded, and the reference's log-probs (ref_params None: no KL).

  Forward passes only where needed: the value head for value-baseline advantages, the
  reference policy for the KL term, the current policy for rows without behaviour
  log-probs (visit targets); none for group advantages without KL. advantage: group
  (standardised within each prompt's group_size rows), group_mean (centred only),
  reward_minus_value or gae; rows that bring advantages keep theirs. ref_layer_weights:
  ref_params' decoder layers are this device's shards, which it gathers one layer at a time
  (`Qwen2Model(..., layer_weights=)`), so no whole copy of the reference is ever held."""
  tokens = traj.tokens
  positions = jnp.arange(tokens.shape[1] - 1)[None]
  # entry t predicts token t + 1: generated when prompt_length <= t + 1 < length
  mask = ((positions + 1 >= traj.prompt_length[:, None]) &
          (positions + 1 < traj.length[:, None])).astype(jnp.float32)
  scores = lambda p, layer_weights=None: jax.lax.stop_gradient(learner.sequence_logprobs(
      graphdef, p, tokens, temperature=config.temperature, chunk_size=config.logit_chunk,
      with_values=False, remat=layer_weights is not None, layer_weights=layer_weights)[0])
  if traj.behaviour_logprobs is None:
    old_logprobs = scores(params)
  else:
    old_logprobs = traj.behaviour_logprobs * mask
  ref_logprobs = (None if ref_params is None or not config.kl_coef
                  else scores(ref_params, ref_layer_weights))
  if traj.advantages is not None:  # given by the producer (tree targets)
    advantages = traj.advantages * mask
  else:
    estimator = ADVANTAGES[advantage]
    old_values = (jax.lax.stop_gradient(learner.sequence_values(graphdef, params, tokens))
                  if estimator.needs_values else None)
    advantages = estimator.fn(traj.reward, mask, group_size, old_values)
  return learner.LearnerBatch(tokens=tokens, mask=mask, advantages=advantages,
                              returns=traj.reward[:, None] * mask, old_logprobs=old_logprobs,
                              ref_logprobs=ref_logprobs)
