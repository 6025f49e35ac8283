"""Orbax checkpoints of the whole training state: params, optimizer, step, rng, data position.

`restore_latest` falls back to an older checkpoint, with a warning, when the newest cannot
be read (a run killed mid-write, a corrupted disk), so a crash never costs the whole run.
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
    for step in reversed(self.steps()):
      try:
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax raises many types for unreadable files
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying an older one",
                        step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        print(f"warning: checkpoint {step} is unreadable; falling back to an older one")
        continue
      return step, restored["state"], int(restored["data_position"])
    return None

  def close(self):
    self.manager.close()
