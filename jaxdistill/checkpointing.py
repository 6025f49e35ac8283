"""Orbax checkpoints of the whole training state: params, optimizer, step, rng, data position.

`restore_latest` (and `restore_params`, the params alone) falls back to an older checkpoint,
with a warning, when the newest cannot be read (a run killed mid-write, a corrupted disk), so a
crash never costs the whole run.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Save / restore {'state': TrainState, 'data_position': int} under `directory`."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, data_position: int) -> None:
    """Write checkpoint `step` and wait for it (a kill after this returns loses nothing)."""
    payload = {"state": state, "data_position": data_position}
    self.manager.save(step, args=ocp.args.StandardSave(payload))
    self.manager.wait_until_finished()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state):
    """(step, state, data_position) of the newest readable checkpoint, or None if none."""
    target = {"state": abstract_state, "data_position": 0}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    found = self._newest_readable(
        lambda step: self.manager.restore(step, args=ocp.args.StandardRestore(abstract)))
    if found is None:
      return None
    step, restored = found
    return step, restored["state"], int(restored["data_position"])

  def restore_params(self, abstract_params):
    """(step, params) of the newest readable checkpoint, or None if none: the params alone,
    whatever optimizer state they were saved with (an evaluation does not know the run's
    learner settings, e.g. a value head's own learning rate, which shape that state)."""
    target = {"state": {"params": abstract_params}}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    args = ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)
    found = self._newest_readable(lambda step: self.manager.restore(step, args=args))
    return None if found is None else (found[0], found[1]["state"]["params"])

  def _newest_readable(self, restore):
    """(step, restore(step)) for the newest step that restores, or None."""
    for step in reversed(self.steps()):
      try:
        return step, restore(step)
      except Exception as e:  # orbax raises many types for unreadable files
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying an older one",
                        step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        print(f"warning: checkpoint {step} is unreadable; falling back to an older one")
    return None

  def close(self):
    self.manager.close()


class NoReadableCheckpoint(Exception):
  """A workdir has checkpoints and none of them can be read."""


def latest_model(model, workdir: str):
  """The model with the params of the latest readable checkpoint in workdir/checkpoints (the
  model itself when there is none), whatever learner settings the run was trained with."""
  from flax import nnx
  directory = os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(directory) if os.path.isdir(directory) else None
  if checkpointer is None or not checkpointer.steps():
    print("no checkpoint in the workdir: using the initial model")
    return model
  graphdef, params = nnx.split(model)
  restored = checkpointer.restore_params(params)
  if restored is None:
    raise NoReadableCheckpoint(
        f"no checkpoint in {directory} is readable (steps {checkpointer.steps()}); "
        "evaluating the initial model instead would be misleading")
  print(f"using checkpoint {restored[0]}")
  return nnx.merge(graphdef, restored[1])
