"""The training program: one jitted SPMD iteration (rollouts -> learner batch -> update),
compiled once, and the outer loop with progress, metrics, evaluation and checkpoints."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jaxdistill import evaluate as evaluation
from jaxdistill import methods, parallel, rewards, runs, settings, streams
from jaxdistill.checkpointing import Checkpointer
from jaxdistill.interrupts import GracefulStop
from jaxdistill.layout import Layout
from jaxdistill.metrics import MetricsLog, plot_run
from jaxdistill.models.qwen2 import compute_copy, forward_flops_per_token
from jaxdistill.rl import learner, rollouts
from jaxdistill.rl.batch import ADVANTAGES, assemble_batch


def say(text: str) -> None:
  """Print on the primary process only (one line per event, not one per host)."""
  if parallel.is_primary():
    print(text)


def _stages(graphdef, optimizer, spec: settings.IterationSpec, reward_fn, dense_reward_fn,
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


def build_iteration(graphdef, optimizer, spec: settings.IterationSpec, reward_fn,
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


def build_phases(graphdef, optimizer, spec: settings.IterationSpec, reward_fn,
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


def assemble_forwards(spec: settings.IterationSpec) -> int:
  """Forward passes `assemble_batch` runs over the learner batch: the reference policy's
  (KL), the current policy's (visit rows carry no behaviour log-probs) and the value
  head's (value-baseline advantages; tree targets bring their own)."""
  method = methods.get(spec.method)
  value_baseline = (ADVANTAGES[spec.advantage].needs_values
                    and not method.brings_advantages(spec))
  return (int(spec.learner.kl_coef > 0) + int(method.scores_current_policy(spec))
          + int(value_baseline))


def phase_flops(spec: settings.IterationSpec, prompts: int, prompt_width: int,
                flops_per_token: float) -> dict:
  """Forward-equivalent FLOPs of each phase for one iteration (static shapes, padding
  included): rollout = the positions the LM runs on; assemble = the forwards it runs
  (`assemble_forwards`); update = forward + backward (3 forwards) per gradient step."""
  method = methods.get(spec.method)
  rows, width = method.learner_shape(prompts, prompt_width, spec)
  positions = rows * (width - 1)
  return {"rollout": method.forward_tokens(prompts, prompt_width, spec) * flops_per_token,
          "assemble": assemble_forwards(spec) * positions * flops_per_token,
          "update": 3 * spec.learner.epochs * positions * flops_per_token}


def prompt_keys(seed: int, step: int, problem_ids):
  """One key per prompt from the rollout stream, the step and the problem id: independent
  of the device count."""
  base = jax.random.fold_in(streams.key(seed, "rollout"), step)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(problem_ids, jnp.uint32))


def _initial_state(model, spec: settings.IterationSpec, seed: int, mesh):
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


def _restore(config, workdir: str, state, schedule=None):
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


class _Evaluations:
  """A run's evaluations without search: on the test problems (eval_*), the validation
  problems (val_*) and the learning curve's share of them (curve_*), each logged, and the
  final ones written with each problem's score."""

  def __init__(self, config, task, tokenizer, graphdef, test_problems, validation_problems,
               log: MetricsLog, workdir: str):
    self.config, self.task, self.tokenizer, self.graphdef = config, task, tokenizer, graphdef
    self.test = test_problems[:config.eval.num_problems]
    self.validation = list(validation_problems)
    self.log, self.workdir = log, workdir
    self.settings = settings.evaluation(config)
    self.seed = settings.evaluation_seed(config)

  def run(self, step: int, params, problems, prefix: str, final: bool = False) -> dict:
    """final: the last evaluation of a split; its per-problem scores (each problem's mean
    reward, the same numbers `--mode eval` writes) go to WORKDIR/eval_after.json (test) or
    val_after.json (validation), so a comparison needs no second evaluation of the same
    checkpoint, keys and temperature."""
    config = self.config
    policy = nnx.merge(self.graphdef, compute_copy(params, config.model.dtype))
    result = evaluation.evaluate(policy, self.tokenizer, self.task, problems, self.settings,
                                 seed=self.seed, prompt=config.task.prompt,
                                 per_problem=final)
    per_problem = result.pop("per_problem", None)
    self.log.write(step, {f"{prefix}_{k}": v for k, v in result.items()})
    if parallel.is_primary():
      if per_problem is not None:
        split = "validation" if prefix == "val" else "test"
        evaluation.write_result(os.path.join(self.workdir, f"{prefix}_after.json"), result,
                                per_problem=per_problem, step=step, split=split,
                                seed=self.seed, temperature=config.eval.temperature)
      plot_run(self.log.rows(), config.eval.k, os.path.join(self.workdir, "eval.png"))
    return result

  def at_start(self, params) -> dict:
    """Summary entries of the evaluations before training (eval.at_start)."""
    if not (self.config.eval.at_start and self.config.eval.every):  # every=0: none at all
      return {}
    summary = {"eval_before": self.run(0, params, self.test, "eval")}
    if self.validation:  # the validation curve starts where the model starts
      summary["val_before"] = self.run(0, params, self.validation, "val")
    return summary

  def after(self, step: int, params, done: bool) -> dict:
    """Summary entries of the evaluations due after `step` updates: the final ones when
    done, else a learning-curve point every eval.every updates."""
    every = self.config.eval.every
    if not every:
      return {}
    if done:
      summary = {"eval_after": self.run(step, params, self.test, "eval", final=True)}
      if self.validation:
        summary["val_after"] = self.run(step, params, self.validation, "val", final=True)
      return summary
    if step % every:
      return {}
    curve = self.validation[:self.config.eval.curve_problems]
    if curve:
      self.run(step, params, curve, "curve")
      return {}
    return {"eval_after": self.run(step, params, self.test, "eval")}


def _feeder(config, task, tokenizer, train_problems, mesh):
  """feed(step, data position, ids=None, extras=None) -> the iteration's prompt tokens,
  lengths, problem ids, keys and extras as global arrays; each process builds only its own
  rows. ids: the problems a method's schedule picked (default: the next in data order);
  extras: its per-prompt arrays."""
  prompts = config.train.prompts_per_iteration

  def feed(step: int, data_position: int, ids=None, extras=None):
    batch_ids = ids if ids is not None else [
        (data_position + i) % len(train_problems) for i in range(prompts)]
    extras = extras or {}

    def rows(lo, hi):  # only this host's prompts
      ids = batch_ids[lo:hi]
      tokens, lengths = evaluation.encode_prompts(
          task, tokenizer, [train_problems[i] for i in ids], config.task.prompt,
          config.task.prompt_width)
      keys = np.asarray(jax.random.key_data(prompt_keys(config.seed, step, ids)))
      return (tokens, lengths, np.asarray(ids, np.int32), keys,
              {name: value[lo:hi] for name, value in extras.items()})

    return parallel.global_rows(mesh, prompts, rows)

  return feed


def _iteration_cost(config, spec: settings.IterationSpec, model) -> dict:
  """Compute per iteration, for comparisons at equal budget: positions the LM runs on
  (static shapes, padding included) and forward FLOPs (at a mid-length context); with
  train.phase_timing, each phase's FLOPs too."""
  prompts, width = config.train.prompts_per_iteration, config.task.prompt_width
  forward_tokens = methods.get(spec.method).forward_tokens(prompts, width, spec)
  context = width + spec.rollout.max_completion_tokens // 2
  flops_per_token = forward_flops_per_token(model.config, context)
  phases = (phase_flops(spec, prompts, width, flops_per_token)
            if config.train.phase_timing else {})
  return {"forward_tokens": forward_tokens, "flops_per_token": flops_per_token,
          "phases": phases}


def _timing_metrics(metrics: dict, phases: dict) -> dict:
  """Achieved FLOP/s of each timed phase and the rollout's sampled tokens per second."""
  extra = {f"phase_flop_per_s/{phase}": flop / metrics[f"phase_s/{phase}"]
           for phase, flop in phases.items()}
  if phases:
    extra["rollout_tokens_per_s"] = metrics["generated_tokens"] / metrics["phase_s/rollout"]
  return extra


def train(config, task, model, tokenizer, train_problems, test_problems, workdir: str,
          validation_problems=(), mesh=None) -> dict:
  """Run config.train.num_iterations iterations of config.algo on a task's problems
  (resuming from workdir); returns a summary.

  Evaluations: at the start (eval.at_start) and the end on the test problems (eval_*) and on
  the validation problems (val_*); in between (every eval.every iterations) on the first
  eval.curve_problems validation problems (curve_*): the learning curve, from the start's.
  mesh: the devices to run on (default: all of them, `parallel.make_mesh()`)."""
  config = settings.resolved(config)  # the learner's values as trained (and recorded)
  spec = settings.iteration(config, tokenizer, task.step_delimiter, model.config.vocab_size)
  mesh = mesh or parallel.make_mesh(fsdp=config.parallel.fsdp)
  if parallel.fsdp_size(mesh) != config.parallel.fsdp:
    raise ValueError(f"the mesh splits parameters over {parallel.fsdp_size(mesh)} devices, "
                     f"the config over parallel.fsdp={config.parallel.fsdp}")
  prompts = config.train.prompts_per_iteration
  parallel.check_divisible(prompts, mesh, "train.prompts_per_iteration")
  graphdef, optimizer, state, ref_params, layout = _initial_state(model, spec, config.seed,
                                                                  mesh)
  method = methods.get(spec.method)
  schedule = method.schedule(config, spec, task, tokenizer, train_problems)
  checkpointer, start, state, data_position = _restore(config, workdir, state, schedule)
  log = MetricsLog(workdir, resume_step=start, enabled=parallel.is_primary(), announce=say)

  reward_fn = rewards.task_reward_fn(task, tokenizer, train_problems, dense=config.reward.dense)
  dense_fn = rewards.task_reward_fn(task, tokenizer, train_problems, dense=True)
  build = build_phases if config.train.phase_timing else build_iteration
  iteration = build(graphdef, optimizer, spec, reward_fn, dense_fn, mesh, layout,
                    with_rows=schedule is not None)
  evaluations = _Evaluations(config, task, tokenizer, graphdef, test_problems,
                             validation_problems, log, workdir)
  feed = _feeder(config, task, tokenizer, train_problems, mesh)
  cost = _iteration_cost(config, spec, model)

  summary = {"start_step": start}
  if start == 0:
    summary |= evaluations.at_start(state.params)
  total = config.train.num_iterations
  budget = config.train.token_budget  # 0: no budget, run all iterations
  kept = log.rows()
  generated = sum(r.get("generated_tokens", 0) for r in kept if "loss" in r)
  if budget and generated >= budget:
    total = start  # a resumed run that had already spent its budget
  # a resumed run's clock goes on from its last kept update: elapsed_s is the whole run's
  # training time, not the last process's (a comparison reports it per run)
  clock = [r["elapsed_s"] for r in kept if "elapsed_s" in r]
  started = time.perf_counter() - (clock[-1] if start and clock else 0.0)
  bar = tqdm(range(start, total), initial=start, total=total, desc=config.algo,
             disable=not (config.train.progress and parallel.is_primary()))
  metrics = {}
  skipped_in_a_row = 0
  with GracefulStop(announce=say) as stop:  # SIGTERM / Ctrl-C end the loop cleanly
    for step in bar:
      ids, extras, planned = None, None, {}
      if schedule is not None:  # the method picks the problems (and its rounds' filter)
        policy = lambda: nnx.merge(graphdef, compute_copy(state.params, config.model.dtype))
        ids, extras, planned = schedule.before(step, policy)
      state, metrics, rows = iteration(state, ref_params,
                                       *feed(step, data_position, ids, extras))
      data_position += prompts
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if schedule is not None:
        schedule.after(ids, parallel.all_rows(rows))  # the same on every host
        # what the schedule sampled (DeepSearch's filter) is generated and computed too
        metrics = metrics | planned
        metrics["generated_tokens"] += planned.get("filter_tokens", 0.0)
      forward = cost["forward_tokens"] + metrics.get("filter_forward_tokens", 0.0)
      metrics |= _timing_metrics(metrics, cost["phases"])
      skipped_in_a_row = skipped_in_a_row + 1 if metrics["skipped"] else 0
      if metrics["skipped"]:
        say(f"warning: step {step + 1}: non-finite loss or gradient; update skipped")
      log.write(step + 1, metrics | {"elapsed_s": time.perf_counter() - started,
                                     "forward_tokens": forward,
                                     "forward_flops": forward * cost["flops_per_token"]})
      bar.set_postfix(loss=f"{metrics['loss']:.3f}", reward=f"{metrics['reward']:.2f}")
      generated += metrics["generated_tokens"]
      done = step + 1 == total or (budget and generated >= budget)
      summary |= evaluations.after(step + 1, state.params, done)
      if skipped_in_a_row >= config.train.max_skipped_updates:
        last = max(checkpointer.steps(), default=None)
        say(f"stopping: {skipped_in_a_row} updates in a row were non-finite and skipped "
            f"(train.max_skipped_updates={config.train.max_skipped_updates}); the last "
            f"checkpoint is step {last}: lower the learning rate or check the data, then "
            "run the command again to resume from it")
        summary["stopped"] = {"signal": "non-finite updates", "step": last or 0,
                              "exit_code": 1}
        total = step + 1
        break
      saved = (step + 1) % config.train.checkpoint_every == 0 or done
      extra = None if schedule is None else schedule.arrays()
      if saved:
        checkpointer.save(step + 1, state, data_position, extra)
      if done:
        total = step + 1
        break
      if stop.agreed():  # SIGTERM / Ctrl-C: keep this iteration, resume from it later
        if not saved:
          checkpointer.save(step + 1, state, data_position, extra)
        summary["stopped"] = {"signal": stop.name, "step": step + 1,
                              "exit_code": stop.exit_code}
        total = step + 1
        break
  checkpointer.close()
  bar.close()
  if parallel.is_primary():  # the training curve up to the last update
    plot_run(log.rows(), config.eval.k, os.path.join(workdir, "eval.png"))
  summary |= {"end_step": total, "generated_tokens": generated, "last_metrics": metrics,
              "compiles": iteration.traces, "params": state.params,
              "data_position": data_position}
  if schedule is not None:  # the method's host state as the last checkpoint holds it
    summary["schedule"] = schedule.arrays()
  return summary
