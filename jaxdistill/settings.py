"""The one source of settings: the run's ConfigDict (`jaxdistill/configs/`) turned into the
frozen dataclasses each layer takes. Those dataclasses have no defaults for what the config
sets, so a value lives in one place (the config file and its presets) and a layer that is
handed settings cannot silently run on values of its own.

Token ids and the step delimiter are not settings: they come from the tokenizer and the task
(`iteration` reads them; the others take them as arguments)."""

from __future__ import annotations

import copy
import dataclasses

from typing import Any

from jaxdistill import methods, stopping, tokenization
from jaxdistill.evaluate import EvalSettings
from jaxdistill.rl import learner as learner_lib
from jaxdistill.rl import rollouts
from jaxdistill.search import lm_expand
from jaxdistill.sft import SFTSettings

METHODS = tuple(methods.METHODS)


@dataclasses.dataclass(frozen=True)
class IterationSettings:
  """Everything static about one training iteration."""

  method: str
  rollout: rollouts.RolloutSettings
  search: rollouts.SearchSettings | None
  learner: learner_lib.LearnerSettings
  advantage: str
  compute_dtype: str  # the dtype sampling and search compute in
  options: Any = None  # the method's own static settings (`Method.options`)


def resolved(config):
  """The config with each learner field left None set to its method's value: the method's
  own `method_learner` entry where it names the field, else `method_learner.default` (the
  config itself when nothing is None). Idempotent; every reader of the learner's fields
  goes through it (main.run_job, train.train, validation, `learner`)."""
  if all(value is not None for value in config.learner.values()):
    return config
  table = config.method_learner
  own = table[config.algo] if config.algo in table.keys() else table.default
  out = copy.deepcopy(config)
  for field, value in config.learner.items():
    if value is None:
      source = own if field in own.keys() else table.default
      if field in source.keys():
        out.learner[field] = source[field]
  return out


def learner(config) -> learner_lib.LearnerSettings:
  """The update's settings (no tokenizer needed). warmup_steps and decay_steps count
  iterations in the config and optimizer steps here (epochs x minibatches per iteration)."""
  config = resolved(config)
  l = config.learner
  steps = l.epochs * l.minibatches
  return learner_lib.LearnerSettings(
      temperature=methods.get(config.algo).learner_temperature(config), logit_chunk=l.logit_chunk, remat=l.remat,
      loss_aggregation=l.loss_aggregation, ppo_eps_high=l.ppo_eps_high,
      dual_clip=l.dual_clip,
      policy_loss=l.policy_loss, eps_high=l.eps_high, ppo_eps=l.ppo_eps,
      value_coef=l.value_coef, value_trunk_grad=l.value_trunk_grad, kl_coef=l.kl_coef,
      learning_rate=l.learning_rate, value_learning_rate=l.value_learning_rate,
      end_learning_rate=l.end_learning_rate, warmup_steps=l.warmup_steps * steps,
      decay_steps=(l.decay_steps or config.train.num_iterations) * steps,
      weight_decay=l.weight_decay,
      clip_norm=l.clip_norm, epochs=l.epochs, minibatches=l.minibatches)


def rollout(config, eos_id: int = 1, pad_id: int = 0) -> rollouts.RolloutSettings:
  """The trajectory producers' settings (token ids from the tokenizer)."""
  r = config.rollout
  return rollouts.RolloutSettings(
      max_completion_tokens=r.max_completion_tokens, temperature=r.temperature, top_p=r.top_p,
      group_size=r.group_size, best_of=r.best_of, eos_id=eos_id, pad_id=pad_id)


def search(config, step_end: stopping.StopString | None = None, eos_id: int = 1,
           pad_id: int = 0) -> rollouts.SearchSettings:
  """The search's settings; step_end: the task's step delimiter as a stop string (None: the
  shapes only, as the memory planner needs them)."""
  s, r = config.search, config.rollout
  lm = lm_expand.LMSearchSettings(
      num_children=s.num_children, max_step_tokens=s.max_step_tokens,
      max_path_tokens=s.max_path_tokens, temperature=s.temperature,
      length_normalized_prior=s.length_normalized_prior, dedup_children=s.dedup_children,
      rollout_to_end=s.rollout_to_end, branch_at=s.branch_at, reuse_kv=s.reuse_kv,
      max_rollout_tokens=s.max_rollout_tokens or r.max_completion_tokens,
      step_end=step_end, eos_id=eos_id, pad_id=pad_id)
  return rollouts.SearchSettings(
      lm=lm, num_iterations=s.num_iterations, num_agents=s.num_agents, c_puct=s.c_puct,
      first_play_value=s.first_play_value, virtual_loss=s.virtual_loss,
      root_selection=s.root_selection, targets=s.targets, tree_rows=s.tree_rows,
      step_advantage=s.step_advantage, complete_path=s.complete_path,
      unfinished_reward=s.unfinished_reward)


def evaluation(config) -> EvalSettings:
  """mean@k settings (the `eval` and `task` sections)."""
  e = config.eval
  return EvalSettings(k=e.k, temperature=e.temperature, top_p=e.top_p,
                    max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                    prompt_width=config.task.prompt_width)


def evaluation_seed(config) -> int:
  """The evaluation stream's seed: eval.seed, or the run's seed where it is -1."""
  return config.seed if config.eval.seed < 0 else config.eval.seed


def warm_start(config) -> SFTSettings:
  """The supervised warm start's settings."""
  s = config.sft
  return SFTSettings(steps=s.steps, batch_size=s.batch_size, learning_rate=s.learning_rate,
                   warmup_steps=s.warmup_steps, sequence_length=s.sequence_length, seed=s.seed)


def iteration(config, tokenizer=None, step_delimiter: str | None = None,
              vocab_size: int | None = None) -> IterationSettings:
  """The training iteration's settings. With a tokenizer (whose model has vocab_size logits,
  which may exceed the tokenizer's ids) the step delimiter (the task's) becomes the search's
  stop string; without one, only the shapes are right (the memory planner)."""
  method = methods.get(config.algo)
  ids = _ids(tokenizer)
  found = (step_search(config, tokenizer, step_delimiter, vocab_size) if method.searches
           else None)
  return IterationSettings(method=config.algo, rollout=rollout(config, ids.eos_id, ids.pad_id),
                       search=found, learner=learner(config),
                       advantage=method.advantage(config), compute_dtype=config.model.dtype,
                       options=method.options(config))


def _ids(tokenizer) -> tokenization.SpecialIds:
  return (tokenization.special_ids(tokenizer) if tokenizer is not None
          else tokenization.SpecialIds(pad_id=0, eos_id=1))


def step_search(config, tokenizer=None, step_delimiter: str | None = None,
                vocab_size: int | None = None) -> rollouts.SearchSettings:
  """The step search's settings whatever the method (a training method's search, or the
  evaluation's test-time search); without a tokenizer, the shapes only."""
  ids = _ids(tokenizer)
  # a step ends after the token that completes the delimiter, however it is tokenized
  step_end = None
  if tokenizer is not None:
    if step_delimiter is None:
      raise ValueError("a search over steps needs the task's step_delimiter")
    step_end = stopping.stop_for(tokenizer, step_delimiter, vocab_size)
  return search(config, step_end, ids.eos_id, ids.pad_id)
