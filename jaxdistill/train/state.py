"""The train state: initialised from the model and placed on the mesh, or restored from the
run's last readable checkpoint (a resume that would mix two runs refuses first)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill import parallel, settings, streams
from jaxdistill.models.qwen2 import compute_copy
from jaxdistill.rl import learner
from jaxdistill.train import runs
from jaxdistill.train.checkpointing import Checkpointer
from jaxdistill.train.layout import Layout
from jaxdistill.parallel import say


def initial_state(model, spec: settings.IterationSettings, seed: int, mesh):
  """(graphdef, optimizer, state, ref_params, layout): the train state and the frozen
  initial policy (the KL reference, kept in the compute dtype it is read in), placed on the
  mesh as the layout says (repeated, or split over 'fsdp')."""
  graphdef, params = nnx.split(model)
  ref_params = compute_copy(jax.tree.map(jnp.copy, params), spec.compute_dtype)
  # the learner's stream, as raw key data: what the checkpoints hold
  key = jax.random.key_data(streams.key(seed, "learner"))
  abstract = jax.eval_shape(lambda p: learner.init_state(
      p, learner.make_optimizer(spec.learner), key), params)
  layout = Layout(abstract, ref_params, mesh, spec.compute_dtype)
  optimizer = learner.make_optimizer(
      spec.learner, square_norm=None if layout.fsdp is None else layout.fsdp.square_norm)
  state = learner.init_state(params, optimizer, key)
  # global arrays: restored ones keep this sharding
  return (graphdef, optimizer, parallel.replicate(state, mesh, layout.state),
          parallel.replicate(ref_params, mesh, layout.ref), layout)


def restore(config, workdir: str, state, schedule=None):
  """(checkpointer, start step, state, data position): the run in workdir resumed (with the
  method's schedule, when it has one), or moved aside first (train.restart). Refuses, with
  nothing touched, when the saved state is another config's (runs.check_resume)."""
  if config.train.restart and parallel.is_primary():
    moved = runs.move_aside(workdir)
    if moved:
      say(f"restart: the previous run's outputs moved to {moved}")
  parallel.barrier("restart")
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep)
  runs.check_resume(workdir, config, bool(checkpointer.steps()), announce=say)
  extra = None if schedule is None else schedule.arrays()
  restored = checkpointer.restore_latest(state, extra)
  start, data_position = 0, 0
  if restored is not None:
    start, state, data_position, extra = restored
    if schedule is not None:
      schedule.load(extra)
    say(f"resumed from checkpoint {start} (data position {data_position})")
  if parallel.is_primary():  # only once the state is restored: a refusal changes nothing
    runs.write_record(workdir, config)
  return checkpointer, start, state, data_position
