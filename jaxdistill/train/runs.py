"""A run directory keeps the config it runs with (`config.json`, beside `checkpoints/`), so
that a resume can tell whether the saved state belongs to the command it was given.

A resume whose config differs in a setting that shapes the saved state (the model, its
dtypes, the optimizer's structure, the initial model a warm start builds) refuses and
changes nothing: restoring would fail or, worse, mix two runs. Other differences (the
number of iterations, evaluation, a learning-rate value) resume and are printed.
`train.restart=True` moves the old run aside (never deletes it) and starts over.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil

from jaxdistill.errors import UsageError

RECORD = "config.json"
# what a run writes into its workdir (caches such as data/ and warm_start/ stay in place)
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", RECORD, "eval.png", "eval_after.json",
               "val_after.json", "eval_result.json", "tensorboard")


class RunMismatch(UsageError):
  """The workdir holds a run whose saved state another config shaped."""


def flatten(tree: dict, prefix: str = "") -> dict:
  """{'a.b': value} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out |= flatten(value, f"{prefix}{key}.")
    else:
      out[f"{prefix}{key}"] = value
  return out


def _own_value_rate(fields: dict) -> bool:
  """Whether the value head has its own learning rate: an optax.multi_transform, whose
  state has another structure than a single AdamW's."""
  rate, value_rate = fields.get("learner.learning_rate"), fields.get("learner.value_learning_rate")
  return bool(value_rate) and value_rate != rate


def _shapes_state(field: str, fields: dict) -> bool:
  if field == "preset" or (field.startswith("model.") and field != "model.precision"):
    return True
  # a locally built model is the warm start's result: it is the KL reference and what
  # the params were trained from (a model.path run ignores the sft section)
  return (field.startswith("sft.") and field != "sft.cache_dir"
          and not fields.get("model.path"))


def differences(recorded: dict, current: dict) -> tuple[list[str], list[str]]:
  """(differences that shape the saved state, the others), each 'field: old -> new', for
  two flattened configs."""
  shaping, other = [], []
  for field in sorted(set(recorded) | set(current)):
    old, new = recorded.get(field, "(absent)"), current.get(field, "(absent)")
    if old == new:
      continue
    line = f"{field}: {old!r} -> {new!r}"
    if _shapes_state(field, current) or _shapes_state(field, recorded):
      shaping.append(line)
    elif field in ("learner.learning_rate", "learner.value_learning_rate") and (
        _own_value_rate(recorded) != _own_value_rate(current)):
      shaping.append(line + " (the value head's own rate changes the optimizer state)")
    else:
      other.append(line)
  return shaping, other


def read_record(workdir: str) -> dict | None:
  path = os.path.join(workdir, RECORD)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_record(workdir: str, config) -> None:
  """The config as JSON (written whole, then renamed over the old one)."""
  from jaxdistill.files import write_json
  write_json(os.path.join(workdir, RECORD), json.loads(config.to_json_best_effort()))


def move_aside(workdir: str) -> str | None:
  """Move the run's outputs into WORKDIR/restarted-<UTC time>/; returns that directory, or
  None when there was nothing to move."""
  present = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(workdir, name))]
  if not present:
    return None
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
  target = os.path.join(workdir, f"restarted-{stamp}")
  os.makedirs(target)
  for name in present:
    shutil.move(os.path.join(workdir, name), os.path.join(target, name))
  return target


def check_resume(workdir: str, config, has_checkpoints: bool, announce=print) -> None:
  """Before a run touches its workdir: refuse (RunMismatch) a resume whose config shapes
  the saved state differently, and announce the other differences. The caller records the
  config (`write_record`) once the state is restored."""
  recorded = read_record(workdir)
  current = flatten(json.loads(config.to_json_best_effort()))
  if has_checkpoints and recorded is not None:
    shaping, other = differences(flatten(recorded), current)
    if shaping:
      raise RunMismatch(
          f"{workdir} holds a run whose saved state other settings shaped; resuming with "
          f"these changed would not restore it: {'; '.join(shaping)}. Use the run's "
          "settings, another --workdir, or --config.train.restart=True (moves the old run "
          "aside)")
    for line in other:
      announce(f"resuming with a changed setting: {line}")
  elif has_checkpoints:
    announce(f"warning: {workdir} has checkpoints but no {RECORD} (an older run): its "
             "settings cannot be checked")
