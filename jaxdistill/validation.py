"""One pass over the whole run config before anything is built, generated or compiled.

Every field has a rule (type, range or choices), declared with its default in
`configs/countdown.py` (`configs/rules.py`); cross-field rules check that the settings
can work together. `problems(config)` returns one line per problem, each naming the field,
its value and what is allowed; `main` prints them and exits with status 2.
"""

from __future__ import annotations

from typing import Any


def _schema() -> dict[str, Any]:
  """{'section.field': rule}: each field's rule as declared beside its default
  (`configs/countdown.py`), and method_learner.<method>.<field> the learner field's."""
  from jaxdistill.configs.countdown import base, declarations
  declared = declarations()
  rules = declared.rules()
  for method, entry in base(declared).method_learner.items():
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
