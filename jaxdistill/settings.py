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
from jaxdistill.warmstart.sft import SFTSettings

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


def _from(section, cls, **given):
  """`cls` with each field read from the config section's field of the same name, or from
  `given` (what the section does not hold as is: values computed from several fields, token
  ids); a field in neither keeps its dataclass default, and one without a default is an
  error. So a layer's setting is never copied by hand, and one the config lacks is found
  at once."""
  values = {}
  for field in dataclasses.fields(cls):
    if field.name in given:
      values[field.name] = given[field.name]
    elif field.name in section:
      values[field.name] = section[field.name]
    elif (field.default is dataclasses.MISSING
          and field.default_factory is dataclasses.MISSING):
      raise KeyError(f"{cls.__name__}.{field.name} is neither a config field of its section "
                     "nor given")
  unknown = set(given) - {field.name for field in dataclasses.fields(cls)}
  if unknown:
    raise KeyError(f"{cls.__name__} has no fields {sorted(unknown)}")
  return cls(**values)


def learner(config) -> learner_lib.LearnerSettings:
  """The update's settings (no tokenizer needed). warmup_steps and decay_steps count
  iterations in the config and optimizer steps here (epochs x minibatches per iteration)."""
  config = resolved(config)
  l = config.learner
  steps = l.epochs * l.minibatches
  return _from(l, learner_lib.LearnerSettings,
               temperature=methods.get(config.algo).learner_temperature(config),
               warmup_steps=l.warmup_steps * steps,
               decay_steps=(l.decay_steps or config.train.num_iterations) * steps)


def rollout(config, eos_id: int = 1, pad_id: int = 0) -> rollouts.RolloutSettings:
  """The trajectory producers' settings (token ids from the tokenizer)."""
  return _from(config.rollout, rollouts.RolloutSettings, eos_id=eos_id, pad_id=pad_id)


def search(config, step_end: stopping.StopString | None = None, eos_id: int = 1,
           pad_id: int = 0) -> rollouts.SearchSettings:
  """The search's settings; step_end: the task's step delimiter as a stop string (None: the
  shapes only, as the memory planner needs them)."""
  s = config.search
  lm = _from(s, lm_expand.LMSearchSettings,
             max_rollout_tokens=s.max_rollout_tokens or config.rollout.max_completion_tokens,
             step_end=step_end, eos_id=eos_id, pad_id=pad_id)
  return _from(s, rollouts.SearchSettings, lm=lm)


def evaluation(config) -> EvalSettings:
  """mean@k settings (the `eval` and `task` sections)."""
  return _from(config.eval, EvalSettings, prompt_width=config.task.prompt_width)


def evaluation_seed(config) -> int:
  """The evaluation stream's seed: eval.seed, or the run's seed where it is -1."""
  return config.seed if config.eval.seed < 0 else config.eval.seed


def warm_start(config) -> SFTSettings:
  """The supervised warm start's settings."""
  return _from(config.sft, SFTSettings)


def iteration(config, tokenizer=None, step_delimiter: str | None = None,
              vocab_size: int | None = None) -> IterationSettings:
  """The training iteration's settings. With a tokenizer (whose model has vocab_size logits,
  which may exceed the tokenizer's ids) the step delimiter (the task's) becomes the search's
  stop string; without one, only the shapes are right (the memory planner)."""
  method = methods.get(config.algo)
  ids = _ids(tokenizer)
  found = (step_search(config, tokenizer, step_delimiter, vocab_size) if method.searches
           else None)
  return IterationSettings(method=config.algo,
                           rollout=rollout(config, ids.eos_id, ids.pad_id), search=found,
                           learner=learner(config), advantage=method.advantage(config),
                           compute_dtype=config.model.dtype, options=method.options(config))


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
