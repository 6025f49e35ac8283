"""One pass over the whole run config before anything is built, generated or compiled.

Every field has a rule (type, range or choices); cross-field rules check that the settings
can work together. `problems(config)` returns one line per problem, each naming the field,
its value and what is allowed; `main` prints them and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer >= low (and <= high)."""
  low: int
  high: int | None = None

  def check(self, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
      return "must be an integer"
    if value < self.low or (self.high is not None and value > self.high):
      return f"must be an integer in [{self.low}, {self.high}]" if self.high is not None else (
          f"must be an integer >= {self.low}")
    return None


@dataclasses.dataclass(frozen=True)
class Float:
  """A finite number >= low (> low when open), and <= high."""
  low: float
  high: float | None = None
  open_low: bool = False

  def check(self, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      return "must be a finite number"
    too_low = value <= self.low if self.open_low else value < self.low
    if too_low or (self.high is not None and value > self.high):
      low = f"({self.low}" if self.open_low else f"[{self.low}"
      return (f"must be in {low}, {self.high}]" if self.high is not None else
              f"must be {'>' if self.open_low else '>='} {self.low}")
    return None


@dataclasses.dataclass(frozen=True)
class Choice:
  options: tuple

  def check(self, value) -> str | None:
    return None if value in self.options else f"must be one of {', '.join(self.options)}"


@dataclasses.dataclass(frozen=True)
class Bool:
  def check(self, value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


@dataclasses.dataclass(frozen=True)
class Text:
  def check(self, value) -> str | None:
    return None if isinstance(value, str) else "must be a string"


POSITIVE, COUNT = Int(1), Int(0)
PROBABILITY = Float(0.0, 1.0, open_low=True)  # top-p: (0, 1]
TEMPERATURE = Float(0.0)  # 0 is greedy
RATE = Float(0.0, open_low=True)


def _schema() -> dict[str, Any]:
  from jaxdistill.configs.countdown import PRESETS
  from jaxdistill.models.qwen2 import PRECISIONS
  from jaxdistill.methods import METHODS
  from jaxdistill.rl.batch import ADVANTAGES
  from jaxdistill.rl.losses import POLICY_LOSSES
  from jaxdistill.rl.rollouts import SEARCH_TARGETS
  from jaxdistill.search.frontier import ADVANTAGES as TREE_ADVANTAGES
  from jaxdistill.tasks import TASKS
  rules = {
      "preset": Choice(tuple(PRESETS)), "seed": COUNT,
      "algo": Choice(tuple(METHODS)), "compile_cache_dir": Text(),
      "model.path": Text(), "model.dtype": Choice(("float32", "bfloat16", "float16")),
      "model.param_dtype": Choice(("float32", "bfloat16", "float16")),
      "model.precision": Choice(PRECISIONS), "model.hidden_size": POSITIVE,
      "model.intermediate_size": POSITIVE, "model.num_hidden_layers": POSITIVE,
      "model.num_attention_heads": POSITIVE, "model.num_key_value_heads": POSITIVE,
      "model.rope_theta": RATE,
      "sft.steps": COUNT, "sft.batch_size": POSITIVE, "sft.learning_rate": RATE,
      "sft.warmup_steps": COUNT, "sft.sequence_length": Int(2), "sft.seed": COUNT,
      "sft.cache_dir": Text(),
      "task.name": Choice(tuple(TASKS)), "task.data_seed": COUNT, "task.train_size": POSITIVE,
      "task.test_size": POSITIVE,
      "task.validation_size": COUNT, "task.numbers": Int(2, 6), "task.data_dir": Text(),
      "task.data_path": Text(),
      "task.prompt": Choice(("compact", "chat")), "task.prompt_width": POSITIVE,
      "task.malformed_reward": Float(-1.0, 0.0), "search.complete_path": Bool(),
      "search.unfinished_reward": Float(-1.0, 1.0),
      "reward.dense": Bool(),
      "search.num_children": POSITIVE, "search.max_step_tokens": POSITIVE,
      "search.max_path_tokens": POSITIVE, "search.temperature": TEMPERATURE,
      "search.c_puct": Float(0.0), "search.first_play_value": Float(-1.0, 1.0),
      "search.num_agents": POSITIVE, "search.num_iterations": POSITIVE,
      "search.virtual_loss": Choice(("visit", "value")),
      "search.root_selection": Choice(("puct", "gumbel")),
      "search.length_normalized_prior": Bool(), "search.dedup_children": Bool(),
      "search.rollout_to_end": Bool(), "search.max_rollout_tokens": COUNT,
      "search.branch_at": Choice(("step", "entropy")), "search.reuse_kv": Bool(),
      "search.targets": Choice(tuple(SEARCH_TARGETS)), "search.tree_rows": POSITIVE,
      "search.step_advantage": Bool(),
      "deepsearch.trajectories": POSITIVE, "deepsearch.expansions": POSITIVE,
      "deepsearch.max_depth": POSITIVE, "deepsearch.frontier_q": Float(0.0),
      "deepsearch.frontier_entropy": Float(0.0), "deepsearch.frontier_depth": Float(0.0),
      "deepsearch.backup_floor": Float(0.0, 1.0), "deepsearch.incomplete_reward": Float(-1.0, 0.0),
      "deepsearch.advantage": Choice(tuple(TREE_ADVANTAGES)),
      "deepsearch.round_iterations": COUNT, "deepsearch.filter_k": POSITIVE,
      "deepsearch.filter_threshold": Float(0.0, 1.0), "deepsearch.filter_pool": COUNT,
      "deepsearch.pool_rounds": POSITIVE,
      "deepsearch.replay": Bool(), "deepsearch.replay_capacity": POSITIVE,
      "rollout.max_completion_tokens": POSITIVE, "rollout.temperature": TEMPERATURE,
      "rollout.top_p": PROBABILITY, "rollout.group_size": POSITIVE, "rollout.best_of": POSITIVE,
      "learner.policy_loss": Choice(tuple(POLICY_LOSSES)),
      "learner.advantage": Choice(tuple(name for name, estimator in ADVANTAGES.items()
                                        if not estimator.grouped)),
      "learner.advantage_std": Bool(),
      "learner.eps_high": RATE, "learner.ppo_eps": Float(0.0, 1.0, open_low=True),
      "learner.ppo_eps_high": Float(0.0), "learner.dual_clip": Float(0.0),
      "learner.loss_aggregation": Choice(("sequence", "token")), "learner.logit_chunk": COUNT,
      "learner.remat": Bool(),
      "learner.value_coef": Float(0.0), "learner.value_trunk_grad": Bool(),
      "learner.kl_coef": Float(0.0), "learner.learning_rate": RATE,
      "learner.value_learning_rate": Float(0.0),
      "learner.end_learning_rate": Float(0.0), "learner.warmup_steps": COUNT,
      "learner.decay_steps": COUNT, "learner.weight_decay": Float(0.0),
      "learner.clip_norm": RATE, "learner.epochs": POSITIVE, "learner.minibatches": POSITIVE,
      "train.num_iterations": POSITIVE, "train.prompts_per_iteration": POSITIVE,
      "train.checkpoint_every": POSITIVE, "train.keep": POSITIVE, "train.progress": Bool(),
      "train.token_budget": COUNT, "train.phase_timing": Bool(),
      "train.restart": Bool(), "train.max_skipped_updates": POSITIVE,
      "parallel.fsdp": POSITIVE,
      "eval.k": POSITIVE, "eval.seed": Int(-1), "eval.temperature": TEMPERATURE, "eval.top_p": PROBABILITY,
      "eval.max_new_tokens": POSITIVE, "eval.batch_size": POSITIVE,
      "eval.num_problems": POSITIVE, "eval.every": COUNT, "eval.curve_problems": COUNT,
      "eval.split": Choice(("test", "validation")), "eval.at_start": Bool(),
      "eval.test_time_search": Bool(),
  }
  # method_learner.<method>.<field>: the learner field's rule
  from jaxdistill.configs.countdown import base
  for method, entry in base().method_learner.items():
    rules |= {f"method_learner.{method}.{field}": rules[f"learner.{field}"] for field in entry}
  return rules


def fields(config, prefix: str = "") -> dict[str, Any]:
  """{'section.field': value} of every leaf of a config."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out |= fields(value, f"{prefix}{key}.")
    else:
      out[prefix + key] = value
  return out


def problems(config) -> list[str]:
  """One line per problem with the config (empty: the config is usable)."""
  from jaxdistill import settings
  from jaxdistill.methods import METHODS
  left = {f"learner.{field}" for field, value in config.learner.items() if value is None}
  config = settings.resolved(config)  # a learner field left None: its method's value
  schema = _schema()
  values = fields(config)
  found = []
  for name, value in values.items():
    rule = schema.get(name)
    if name in left and value is not None:  # checked where it was set: method_learner
      continue
    if name.startswith("method_learner."):  # method_learner.<method>.<learner field>
      _, method, field = name.split(".", 2)
      if method != "default" and method not in METHODS:
        found.append(f"config field {name}: method_learner holds 'default' and methods "
                     f"({', '.join(METHODS)}), not {method!r}")
        continue
      rule = schema.get(f"learner.{field}")
    if rule is None:
      found.append(f"config field {name} is not known to the validator")
      continue
    message = rule.check(value)
    if message:
      found.append(f"config field {name}={value!r}: {message}")
  if found:  # cross-field rules assume each field is valid on its own
    return found
  return _cross_field(config)


def _cross_field(c) -> list[str]:
  found = []
  say = lambda text: found.append(text)
  from jaxdistill import methods
  searches = methods.get(c.algo).searches or c.eval.test_time_search
  if searches and c.search.max_path_tokens < c.task.prompt_width + c.search.max_step_tokens:
    say(f"config field search.max_path_tokens={c.search.max_path_tokens}: must leave room for "
        f"a prompt and one step, >= task.prompt_width + search.max_step_tokens = "
        f"{c.task.prompt_width + c.search.max_step_tokens}")
  if searches and c.search.branch_at == "entropy" and not c.search.rollout_to_end:
    say("config field search.branch_at='entropy': needs search.rollout_to_end=True (the "
        "branch point is read off each candidate's rollout)")
  method = methods.get(c.algo)
  found += method.check(c)
  if c.learner.dual_clip and c.learner.dual_clip <= 1.0:
    say(f"config field learner.dual_clip={c.learner.dual_clip}: must be 0 (off) or > 1 (it "
        "bounds the loss of a negative advantage at dual_clip times the advantage)")
  sampling = method.sampling_temperature(c)
  if not sampling[1]:
    say(f"config field {sampling[0]}=0: training samples must be drawn at a temperature > 0 "
        "(the learner scores them at that temperature; 0 is greedy decoding)")
  from jaxdistill import tasks
  if c.task.name in tasks.TASKS:
    capacity = tasks.from_config(c).capacity()
    sizes = c.task.train_size + c.task.validation_size + c.task.test_size
    if capacity is not None and sizes > capacity:
      say(f"config field task.train_size={c.task.train_size}: train + validation + test = "
          f"{sizes} distinct problems, but the task has only {capacity}; at most "
          f"{max(capacity - c.task.validation_size - c.task.test_size, 0)} with these "
          "validation and test sizes")
  if c.eval.split == "validation" and not c.task.validation_size:
    say("config field eval.split='validation': needs task.validation_size >= 1")
  if not c.model.path:  # the locally built model
    heads, kv = c.model.num_attention_heads, c.model.num_key_value_heads
    if heads % kv:
      say(f"config field model.num_key_value_heads={kv}: must divide "
          f"model.num_attention_heads={heads}")
    if c.model.hidden_size % heads:
      say(f"config field model.num_attention_heads={heads}: must divide "
          f"model.hidden_size={c.model.hidden_size}")
  if c.learner.warmup_steps and c.learner.decay_steps and (
      c.learner.warmup_steps >= c.learner.decay_steps):
    say(f"config field learner.warmup_steps={c.learner.warmup_steps}: must be smaller than "
        f"learner.decay_steps={c.learner.decay_steps}")
  return found


def device_problems(config, num_devices: int) -> list[str]:
  """Rules that need the device count (after multi-host start-up, before any work)."""
  prompts = config.train.prompts_per_iteration
  found = []
  if prompts % num_devices:
    found.append(f"config field train.prompts_per_iteration={prompts}: must be a multiple of "
                 f"the {num_devices} devices it is split over")
  if num_devices % config.parallel.fsdp:
    found.append(f"config field parallel.fsdp={config.parallel.fsdp}: must divide the "
                 f"{num_devices} devices (parameters are split over groups of that many)")
  if found:
    return found
  from jaxdistill import methods, settings
  spec = settings.iteration(config)  # shapes only
  rows = methods.get(config.algo).learner_shape(prompts // num_devices,
                                                config.task.prompt_width, spec)[0]
  if rows % spec.learner.minibatches:
    found.append(f"config field learner.minibatches={spec.learner.minibatches} ({config.algo}'s "
                 f"where not given, from method_learner): must divide the {rows} learner "
                 f"rows each of the {num_devices} devices gets")
  return found
