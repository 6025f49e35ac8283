"""The learner batch of a method's trajectories: mask, advantages, returns and the
log-probs the loss compares against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdistill.rl import learner, losses, rollouts


def assemble_batch(graphdef, params, ref_params, traj: rollouts.Trajectories, advantage: str,
                   group_size: int, config: learner.LearnerConfig,
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
  elif advantage in ("group", "group_mean"):
    advantages = losses.group_normalized(traj.reward, group_size,
                                         std=advantage == "group")[:, None] * mask
  else:
    old_values = jax.lax.stop_gradient(learner.sequence_values(graphdef, params, tokens))
    if advantage == "gae":
      advantages, _ = losses.gae(traj.reward, old_values, mask)
    else:
      advantages = losses.reward_minus_value(traj.reward, old_values, mask)
  return learner.LearnerBatch(tokens=tokens, mask=mask, advantages=advantages,
                              returns=traj.reward[:, None] * mask, old_logprobs=old_logprobs,
                              ref_logprobs=ref_logprobs)
