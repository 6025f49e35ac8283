"""The settings every part of a comparison reads: `FLAGS`, its command-line flags
(`compare.define_flags`) when it runs as a program; a caller or a test puts a namespace with
the fields it uses in their place. The preset and the helpers below derive from them."""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS


def config():
  """The preset with --set applied: what every run of the comparison is configured with."""
  from jaxdistill.configs import countdown as presets
  return presets.apply_overrides(presets.get_config(FLAGS.preset), FLAGS.set)


def task_name() -> str:
  from jaxdistill import tasks
  return tasks.from_config(config()).name


def eval_k() -> int:
  return config().eval.k


def eval_temperature() -> float:
  """The temperature of each training run's own final test evaluation."""
  return config().eval.temperature

