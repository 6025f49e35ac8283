"""The training iteration as jitted SPMD programs: rollouts -> learner batch -> update, per
device under shard_map, compiled once (`build_iteration`), or as three programs whose phases
are timed one by one (`build_phases`)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxdistill import methods, parallel, settings
from jaxdistill.rl import learner, rollouts
from jaxdistill.rl.batch import assemble_batch
from jaxdistill.train.layout import Layout


def _stages(graphdef, optimizer, spec: settings.IterationSettings, reward_fn, dense_reward_fn,
            layout: Layout):
  """The iteration's three phases, per device: rollout, learner-batch assembly, update."""
  method = methods.get(spec.method)

  def rollout(params, prompt_tokens, prompt_lengths, problems, keys, extras):
    if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
      keys = jax.random.wrap_key_data(keys)  # fed as raw key data (multi-host feeding)
    return method.rollout(graphdef, params, prompt_tokens, prompt_lengths, problems, keys,
                          spec, reward_fn, dense_reward_fn, extras=extras or None)

  def assemble(params, ref_params, traj):
    """params: the master weights (whole) or, under fsdp, the gathered compute copy (the
    same numbers: the body casts its weights to the compute dtype where it reads them);
    ref_params as the layout holds them."""
    ref_params, ref_layer_weights = layout.read_ref(ref_params)
    return assemble_batch(graphdef, params, ref_params, traj, spec.advantage,
                          spec.rollout.group_size, spec.learner, ref_layer_weights)

  def learn(state, batch, traj):
    state, metrics = learner.update(state, batch, graphdef=graphdef, optimizer=optimizer,
                                    config=spec.learner, axis_name=parallel.ROWS,
                                    fsdp=layout.fsdp)
    rows = parallel.ROWS
    completion = (traj.length - traj.prompt_length).astype(jnp.float32)
    valid = (jnp.ones_like(traj.reward) if traj.valid is None
             else traj.valid.astype(jnp.float32))
    mean = lambda x: jax.lax.psum((x * valid).sum(), rows) / jnp.maximum(
        jax.lax.psum(valid.sum(), rows), 1.0)  # over the rows holding trajectories
    stats = {"reward": mean(traj.reward), "solved": mean((traj.reward >= 1.0)),
             "completion_tokens": mean(completion),
             "trajectories": jax.lax.psum(valid.sum(), rows),
             "generated_tokens": jax.lax.psum(traj.generated_tokens.sum(), rows)}
    if traj.replayed is not None:  # rows from a buffer of solutions: generated earlier
      stats["replayed"] = jax.lax.psum(traj.replayed.sum(), rows)
    if traj.advantages is not None:  # rows that bring their own advantages (trees)
      stats |= advantage_stats(traj, valid, lambda x: jax.lax.psum(x, rows))
    return state, metrics | stats

  return rollout, assemble, learn


def advantage_stats(traj: rollouts.Trajectories, valid, total=lambda x: x) -> dict:
  """Token means of the advantages a method's rows bring: over every generated token
  (`advantage_mean`), over those of rows whose prompt has no solved row (a failing tree:
  `advantage_mean_failing`), and those tokens' share (`failing_token_share`). A positive
  mean on failing trees pushes the model's own wrong paths up. total: the sum over the
  devices holding rows (rows of one prompt sit on one device)."""
  positions = jnp.arange(traj.advantages.shape[1])[None]  # target-aligned: token t + 1
  tokens = ((positions >= traj.prompt_length[:, None] - 1)
            & (positions < traj.length[:, None] - 1) & (valid[:, None] > 0))
  solved = (traj.reward >= 1.0) & (valid > 0)
  failing = ~((traj.group[:, None] == traj.group[None, :]) & solved[None, :]).any(-1)
  mean = lambda weights: total((traj.advantages * weights).sum()) / jnp.maximum(
      total(weights.sum()), 1.0)
  on_failing = (tokens & failing[:, None]).astype(jnp.float32)
  return {"advantage_mean": mean(tokens.astype(jnp.float32)),
          "advantage_mean_failing": mean(on_failing),
          "failing_token_share": total(on_failing.sum()) / jnp.maximum(total(tokens.sum()),
                                                                       1.0)}


def learner_rows(traj: rollouts.Trajectories, wanted: bool) -> dict:
  """The rows a method's schedule reads back on the host (`Method.schedule`), or none."""
  if not wanted:
    return {}
  valid = jnp.ones_like(traj.reward, bool) if traj.valid is None else traj.valid
  replayed = jnp.zeros_like(valid) if traj.replayed is None else traj.replayed
  return {"tokens": traj.tokens, "prompt_length": traj.prompt_length, "length": traj.length,
          "reward": traj.reward, "valid": valid, "replayed": replayed}


class Program:
  """A jitted training iteration: `program(state, ref_params, prompts, lengths, problems,
  keys, extras) -> (state, metrics, rows)`, and how often it was traced (`traces`: once per
  compilation; more in steady state means a shape or dtype changed, a bug). extras: the
  per-prompt arrays of the method's schedule ({} without one); rows: the learner rows it
  reads back ({} without one)."""

  def __init__(self, run, traces: list, phases=None):
    self._run, self._traces = run, traces
    # the jitted programs it runs (one fused, or rollout / assemble / update), for the
    # memory planner to lower from abstract shapes
    self.phases = phases or {"iteration": run}

  def __call__(self, *args):
    return self._run(*args)

  @property
  def traces(self) -> int:
    return max(self._traces)


def build_iteration(graphdef, optimizer, spec: settings.IterationSettings, reward_fn,
                    dense_reward_fn, mesh, layout: Layout, with_rows: bool = False) -> Program:
  """One program, jit(shard_map(iteration)): (state, ref_params, prompts, lengths, problems,
  keys, extras) -> (state, metrics, rows). Prompts, problem ids, keys, extras and rows are
  split over every device; state and ref_params as `layout` says; with_rows: the learner
  rows come back (`learner_rows`)."""
  rollout, assemble, learn = _stages(graphdef, optimizer, spec, reward_fn, dense_reward_fn,
                                     layout)
  traces = [0]

  def per_device(state, ref_params, prompt_tokens, prompt_lengths, problems, keys, extras):
    traces[0] += 1  # Python runs only while jit traces
    # sampling and search read a compute-dtype copy of the master weights, made once here
    policy = layout.whole(state.params)
    traj = rollout(policy, prompt_tokens, prompt_lengths, problems, keys, extras)
    current = state.params if layout.fsdp is None else policy
    state, metrics = learn(state, assemble(current, ref_params, traj), traj)
    return state, metrics, learner_rows(traj, with_rows)

  data = P(parallel.ROWS)
  sharded = parallel.shard_map(
      per_device, mesh, in_specs=(layout.state, layout.ref, data, data, data, data, data),
      out_specs=(layout.state, P(), data))
  return Program(jax.jit(sharded, donate_argnums=(0,)), traces)


def build_phases(graphdef, optimizer, spec: settings.IterationSettings, reward_fn,
                 dense_reward_fn, mesh, layout: Layout, with_rows: bool = False) -> Program:
  """The same iteration as three jitted programs (rollout, assemble, learn), so that each
  phase can be timed on its own (`train.phase_timing`); same signature and results as
  `build_iteration` up to the fusion of the three."""
  rollout, assemble, learn = _stages(graphdef, optimizer, spec, reward_fn, dense_reward_fn,
                                     layout)
  data = P(parallel.ROWS)
  traces = [0, 0, 0]

  def counted(index, fn):
    def traced(*args):
      traces[index] += 1
      return fn(*args)
    return traced

  def rollout_rows(params, *rows):  # the per-device token count as a [1] row, to shard
    traj = rollout(layout.whole(params), *rows)
    return traj.replace(generated_tokens=traj.generated_tokens[None])

  def assemble_whole(params, ref_params, traj):
    current = params if layout.fsdp is None else layout.whole(params)
    return assemble(current, ref_params, traj)

  params_spec = layout.state.params
  rollout_jit = jax.jit(parallel.shard_map(counted(0, rollout_rows), mesh,
                                           in_specs=(params_spec, data, data, data, data, data),
                                           out_specs=data))
  assemble_jit = jax.jit(parallel.shard_map(counted(1, assemble_whole), mesh,
                                            in_specs=(params_spec, layout.ref, data),
                                            out_specs=data))
  learn_jit = jax.jit(parallel.shard_map(counted(2, learn), mesh,
                                         in_specs=(layout.state, data, data),
                                         out_specs=(layout.state, P())), donate_argnums=(0,))

  def iteration(state, ref_params, prompt_tokens, prompt_lengths, problems, keys, extras):
    """(state, metrics, rows) with `phase_s/<phase>`: each phase's seconds, device work
    included."""
    seconds = {}
    started = time.perf_counter()
    traj = jax.block_until_ready(rollout_jit(state.params, prompt_tokens, prompt_lengths,
                                             problems, keys, extras))
    seconds["rollout"] = time.perf_counter() - started
    started = time.perf_counter()
    batch = jax.block_until_ready(assemble_jit(state.params, ref_params, traj))
    seconds["assemble"] = time.perf_counter() - started
    started = time.perf_counter()
    state, metrics = jax.block_until_ready(learn_jit(state, batch, traj))
    seconds["update"] = time.perf_counter() - started
    return (state, metrics | {f"phase_s/{name}": s for name, s in seconds.items()},
            learner_rows(traj, with_rows))

  return Program(iteration, traces, {"rollout": rollout_jit, "assemble": assemble_jit,
                                     "update": learn_jit})
