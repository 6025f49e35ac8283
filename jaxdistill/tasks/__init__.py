"""Tasks: `TASKS` maps `config.task.name` to a Task class (jaxdistill.tasks.base)."""

from jaxdistill.tasks.base import Task
from jaxdistill.tasks.countdown import Countdown

TASKS = {"countdown": Countdown}


def from_config(config) -> Task:
  """The task of a run config (its `task` section)."""
  name = config.task.name
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
  return TASKS[name].from_config(config.task)
