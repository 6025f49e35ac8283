"""The outer training loop: the prompts each iteration gets (`feeder`), then iterations with
progress, metrics, evaluations and checkpoints until the iterations or the token budget are
spent, a signal stops it cleanly, or updates keep failing."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxdistill import evaluate as evaluation
from jaxdistill import methods, parallel, settings, streams
from jaxdistill.tasks import rewards
from jaxdistill.train.metrics import MetricsLog, plot_run
from jaxdistill.models.qwen2 import compute_copy
from jaxdistill.parallel import say
from jaxdistill.train.cost import iteration_cost, timing_metrics
from jaxdistill.train.evaluations import Evaluations
from jaxdistill.train.interrupts import GracefulStop
from jaxdistill.train.program import build_iteration, build_phases
from jaxdistill.train.state import initial_state, restore


def prompt_keys(seed: int, step: int, problem_ids):
  """One key per prompt from the rollout stream, the step and the problem id: independent
  of the device count."""
  base = jax.random.fold_in(streams.key(seed, "rollout"), step)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(problem_ids, jnp.uint32))


def feeder(config, task, tokenizer, train_problems, mesh):
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


def _mesh(config, mesh):
  """The mesh given, or all devices split as parallel.fsdp says; checked against the config."""
  mesh = mesh or parallel.make_mesh(fsdp=config.parallel.fsdp)
  if parallel.fsdp_size(mesh) != config.parallel.fsdp:
    raise ValueError(f"the mesh splits parameters over {parallel.fsdp_size(mesh)} devices, "
                     f"the config over parallel.fsdp={config.parallel.fsdp}")
  parallel.check_divisible(config.train.prompts_per_iteration, mesh,
                           "train.prompts_per_iteration")
  return mesh


class _Loop:
  """The loop between iterations: the train state, where it is in the data, the tokens it
  generated (the budget's measure), its clock and its progress bar. A resumed run goes on
  from its kept metrics: its clock from the last kept update (elapsed_s is the whole run's
  training time, not the last process's), its tokens from their sum."""

  def __init__(self, config, iteration, feed, schedule, policy, log, cost, state,
               data_position, start):
    self.config, self.iteration, self.feed, self.schedule = config, iteration, feed, schedule
    self.policy, self.log, self.cost = policy, log, cost
    self.state, self.data_position = state, data_position
    kept = log.rows()
    self.generated = sum(r.get("generated_tokens", 0) for r in kept if "loss" in r)
    self.total = config.train.num_iterations
    self.budget = config.train.token_budget  # 0: no budget, run all iterations
    if self.budget and self.generated >= self.budget:
      self.total = start  # a resumed run that had already spent its budget
    clock = [r["elapsed_s"] for r in kept if "elapsed_s" in r]
    self.started = time.perf_counter() - (clock[-1] if start and clock else 0.0)
    self.bar = tqdm(range(start, self.total), initial=start, total=self.total,
                    desc=config.algo,
                    disable=not (config.train.progress and parallel.is_primary()))
    self.metrics, self.skipped_in_a_row = {}, 0

  def run(self, step: int) -> bool:
    """One iteration after `step` updates, logged; whether it ends the run (the last
    iteration, or the token budget spent)."""
    schedule = self.schedule
    ids, extras, planned = None, None, {}
    if schedule is not None:  # the method picks the problems (and its rounds' filter)
      ids, extras, planned = schedule.before(step, lambda: self.policy(self.state.params))
    self.state, metrics, rows = self.iteration(
        self.state, *self.feed(step, self.data_position, ids, extras))
    self.data_position += self.config.train.prompts_per_iteration
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if schedule is not None:
      schedule.after(ids, parallel.all_rows(rows))  # the same on every host
      # what the schedule sampled (DeepSearch's filter) is generated and computed too
      metrics = metrics | planned
      metrics["generated_tokens"] += planned.get("filter_tokens", 0.0)
    forward = self.cost["forward_tokens"] + metrics.get("filter_forward_tokens", 0.0)
    metrics |= timing_metrics(metrics, self.cost["phases"])
    self.skipped_in_a_row = self.skipped_in_a_row + 1 if metrics["skipped"] else 0
    if metrics["skipped"]:
      say(f"warning: step {step + 1}: non-finite loss or gradient; update skipped")
    self.log.write(step + 1, metrics | {"elapsed_s": time.perf_counter() - self.started,
                                        "forward_tokens": forward,
                                        "forward_flops": forward * self.cost["flops_per_token"]})
    self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", reward=f"{metrics['reward']:.2f}")
    self.generated += metrics["generated_tokens"]
    self.metrics = metrics
    return step + 1 == self.total or bool(self.budget and self.generated >= self.budget)

  def stop(self, step: int, done: bool, checkpointer, stop) -> dict | None:
    """After update `step`: checkpoint when due, and the reason the loop ends here ({} when
    it ends by plan), or None to go on."""
    limit = self.config.train.max_skipped_updates
    if self.skipped_in_a_row >= limit:
      last = max(checkpointer.steps(), default=None)
      say(f"stopping: {self.skipped_in_a_row} updates in a row were non-finite and skipped "
          f"(train.max_skipped_updates={limit}); the last checkpoint is step {last}: lower "
          "the learning rate or check the data, then run the command again to resume from it")
      return {"stopped": {"signal": "non-finite updates", "step": last or 0, "exit_code": 1}}
    saved = step % self.config.train.checkpoint_every == 0 or done
    extra = None if self.schedule is None else self.schedule.arrays()
    if saved:
      checkpointer.save(step, self.state, self.data_position, extra)
    if done:
      return {}
    if stop.agreed():  # SIGTERM / Ctrl-C: keep this iteration, resume from it later
      if not saved:
        checkpointer.save(step, self.state, self.data_position, extra)
      return {"stopped": {"signal": stop.name, "step": step, "exit_code": stop.exit_code}}
    return None


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
  mesh = _mesh(config, mesh)
  graphdef, optimizer, state, ref_params, layout = initial_state(model, spec, config.seed,
                                                                  mesh)
  schedule = methods.get(spec.method).schedule(config, spec, task, tokenizer, train_problems)
  checkpointer, start, state, data_position = restore(config, workdir, state, schedule)
  log = MetricsLog(workdir, resume_step=start, enabled=parallel.is_primary(), announce=say)
  reward_fn = rewards.task_reward_fn(task, tokenizer, train_problems, dense=config.reward.dense)
  dense_fn = rewards.task_reward_fn(task, tokenizer, train_problems, dense=True)
  build = build_phases if config.train.phase_timing else build_iteration
  program = build(graphdef, optimizer, spec, reward_fn, dense_fn, mesh, layout,
                  with_rows=schedule is not None)
  evaluations = Evaluations(config, task, tokenizer, graphdef, test_problems,
                            validation_problems, log, workdir)
  summary = {"start_step": start}
  if start == 0:
    summary |= evaluations.at_start(state.params)
  loop = _Loop(config, lambda state, *rows: program(state, ref_params, *rows),
               feeder(config, task, tokenizer, train_problems, mesh), schedule,
               lambda params: nnx.merge(graphdef, compute_copy(params, config.model.dtype)),
               log, iteration_cost(config, spec, model), state, data_position, start)
  with GracefulStop(announce=say) as stop:  # SIGTERM / Ctrl-C end the loop cleanly
    for step in loop.bar:
      done = loop.run(step)
      summary |= evaluations.after(step + 1, loop.state.params, done)
      ended = loop.stop(step + 1, done, checkpointer, stop)
      if ended is not None:
        summary |= ended
        loop.total = step + 1
        break
  checkpointer.close()
  loop.bar.close()
  if parallel.is_primary():  # the training curve up to the last update
    plot_run(log.rows(), config.eval.k, os.path.join(workdir, "eval.png"))
  summary |= {"end_step": loop.total, "generated_tokens": loop.generated,
              "last_metrics": loop.metrics, "compiles": program.traces,
              "params": loop.state.params, "data_position": loop.data_position}
  if schedule is not None:  # the method's host state as the last checkpoint holds it
    summary["schedule"] = schedule.arrays()
  return summary
