"""Orbax checkpoints of the whole training state: params, optimizer, step, rng, data position.

`restore_latest` passes over a checkpoint only when it cannot be read (files damaged or
missing; orbax never lists one whose write did not finish), with a warning, so a crash
never costs the whole run. A readable checkpoint whose arrays do not match the state being
restored (another model or optimizer) is not "unreadable": it stops the run
(StateMismatch), and so does a directory of checkpoints none of which can be read
(NoReadableCheckpoint) -- starting over would overwrite the run.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from jaxdistill.errors import UsageError


class NoReadableCheckpoint(UsageError):
  """A workdir has checkpoints and none of them can be read."""


class StateMismatch(UsageError):
  """A readable checkpoint holds arrays of another shape or structure than the state."""


def _name(key) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _leaves(tree) -> dict:
  """{'a/b/c': (shape, dtype)} of a pytree of arrays or array metadata (a Python number:
  shape (), dtype None, as orbax stores it in a dtype of its own choosing)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_name(k) for k in path):
          (tuple(leaf.shape), str(leaf.dtype)) if hasattr(leaf, "shape") else ((), None)
          for path, leaf in flat}


def mismatches(saved, target) -> list[str]:
  """'path: saved -> expected' for every array that differs in presence, shape or dtype."""
  saved, target = _leaves(saved), _leaves(target)
  out = []
  for path in sorted(set(saved) | set(target)):
    old, new = saved.get(path), target.get(path)
    if old is not None and new is not None and None in (old[1], new[1]):
      old, new = old[0], new[0]  # a number: its shape only
    if old != new:
      out.append(f"{path}: {old or 'absent'} -> {new or 'absent'}")
  return out


class Checkpointer:
  """Save / restore {'state': TrainState, 'data_position': int} under `directory`, and
  'schedule': a method's host state (fixed-shape numpy arrays) when it has one."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, data_position: int, schedule=None) -> None:
    """Write checkpoint `step` and wait for it (a kill after this returns loses nothing)."""
    payload = {"state": state, "data_position": data_position}
    if schedule is not None:
      payload["schedule"] = schedule
    self.manager.save(step, args=ocp.args.StandardSave(payload))
    self.manager.wait_until_finished()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state, schedule=None):
    """(step, state, data_position, schedule) of the newest readable checkpoint, None if
    there is none at all; StateMismatch if it holds another state's arrays,
    NoReadableCheckpoint if checkpoints exist and none can be read. schedule: the shapes of
    a method's host state, restored as numpy arrays (None: none saved)."""
    target = {"state": abstract_state, "data_position": 0}
    if schedule is not None:
      target["schedule"] = schedule
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

    def restore(step):
      # the arrays' metadata first: a structure or shape mismatch is the config's fault,
      # not the checkpoint's, and must not be passed over as corruption
      saved = self._saved_arrays(step)
      different = mismatches(saved, abstract) if saved is not None else []
      if different:
        more = f" (and {len(different) - 5} more)" if len(different) > 5 else ""
        raise StateMismatch(
            f"checkpoint {step} in {self.directory} holds another state than this config "
            f"builds: {'; '.join(different[:5])}{more}")
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    if not self.steps():
      return None
    found = self._newest_readable(restore)
    if found is None:
      raise NoReadableCheckpoint(
          f"no checkpoint in {self.directory} is readable (steps {self.steps()}); starting "
          "over would overwrite the run: move the directory aside or pass "
          "--config.train.restart=True")
    step, restored = found
    saved = (None if schedule is None
             else jax.tree.map(lambda x: jax.device_get(x), restored["schedule"]))
    return step, restored["state"], int(restored["data_position"]), saved

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

  def _saved_arrays(self, step: int):
    """The shapes and dtypes checkpoint `step` holds (its metadata, no arrays read). A
    manager that did not write the step cannot tell its item's handler, so the standard
    handler reads it directly."""
    from etils import epath
    metadata = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory) / str(step) / "default")
    return getattr(metadata, "tree", metadata)

  def _newest_readable(self, restore):
    """(step, restore(step)) for the newest step that restores, or None."""
    for step in reversed(self.steps()):
      try:
        return step, restore(step)
      except StateMismatch:
        raise
      except Exception as e:  # orbax raises many types for unreadable files
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying an older one",
                        step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        print(f"warning: checkpoint {step} is unreadable; falling back to an older one")
    return None

  def close(self):
    self.manager.close()


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
