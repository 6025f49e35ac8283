"""Settings dataclasses for tests that drive one layer directly: the tiny preset's values
(the one source of settings, jaxdistill.settings) with a test's changes."""

import dataclasses

from jaxdistill import settings
from jaxdistill.configs.countdown import get_config


def learner_config(**changes):
  """The tiny preset's update settings, changed."""
  return dataclasses.replace(settings.learner(get_config("tiny")), **changes)


def sft_config(**changes):
  """The tiny preset's warm-start settings, changed."""
  return dataclasses.replace(settings.warm_start(get_config("tiny")), **changes)


def lm_search_config(**changes):
  """The tiny preset's LM-expansion settings, changed."""
  return dataclasses.replace(settings.search(get_config("tiny")).lm, **changes)
