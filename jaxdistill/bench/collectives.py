"""Collectives of every training program, read off the compiled HLO (nothing runs).

    python -m jaxdistill.bench.collectives [--methods mcts_distill,cispo,best_of_n,deepsearch]
        [--fsdp 2,8] [--remat false,true] [--devices 8] [--out bench_results/collectives.json]

Compiles the training iteration (`train.build_iteration`, the program a run compiles) of each
method x `parallel.fsdp` x `learner.remat` on --devices fake CPU devices at tiny shapes and
reports, per program (`jaxdistill.bench.hlo_collectives`): its collectives, the loops holding
them, any collective that could diverge (inside a conditional, or a loop whose trip count
XLA does not know), and the most threads of one device that can be blocked in collectives at
once (a collective that starts while a loop's collectives still wait). Exits 1 when a program
can diverge, or needs more threads per device than `jaxdistill.cpu_threads` gives XLA:CPU.
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import app, flags

from jaxdistill import cpu_threads
from jaxdistill.bench.common import ensure_cpu_devices, print_table, write_json

# tiny shapes: the programs' structure (which collectives, which loops) does not depend on
# the sizes, and these compile in seconds
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
        "search.num_iterations=2", "search.num_agents=2", "search.max_step_tokens=8",
        "search.max_path_tokens=72", "rollout.max_completion_tokens=16",
        "task.train_size=200", "task.test_size=16", "task.validation_size=16",
        "train.prompts_per_iteration=8", "eval.at_start=False", "eval.every=0",
        "train.progress=False", "sft.steps=0", "deepsearch.trajectories=3",
        "deepsearch.expansions=4",
        # its own learner's minibatch loop, in as many steps as a device's rows (1 prompt x 3)
        "method_learner.deepsearch.minibatches=3"]


def define_flags():
  flags.DEFINE_list("methods", ["mcts_distill", "cispo", "best_of_n", "deepsearch"],
                    "methods (config.algo) whose iteration to compile")
  flags.DEFINE_list("fsdp", ["2", "8"], "parallel.fsdp values")
  flags.DEFINE_list("remat", ["false", "true"], "learner.remat values")
  flags.DEFINE_integer("devices", 8, "fake CPU devices")
  flags.DEFINE_bool("fast", True, "compile without LLVM's optimisation of the kernels (the "
                    "HLO and its schedule are the same; 3x faster)")
  flags.DEFINE_string("out", "bench_results/collectives.json", "JSON output")


FLAGS = flags.FLAGS


def tiny_config(algo: str, fsdp: int, remat: bool, overrides=()):
  """The smoke preset at the tiny shapes above, with the method and layout asked for."""
  from jaxdistill.configs import countdown as presets
  config = presets.apply_overrides(presets.get_config("smoke"), [*TINY, *overrides])
  config.algo = algo
  config.parallel.fsdp = fsdp
  config.learner.remat = remat
  return config


# LLVM's optimisation of the kernels takes about two thirds of a CPU compile and changes
# nothing the check reads: the HLO passes and the schedule do not depend on it (measured:
# mcts_distill at fsdp 8 with remat, the same collectives, loops and overlaps, 11 s instead
# of 35 s)
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def iteration_hlo(config, devices: int, fast: bool = True) -> str:
  """The optimized HLO text of the training iteration `config` compiles on `devices`
  devices (built as `train.train` builds it; compiled, never run; fast: without LLVM's
  optimisation of the kernels, `FAST_COMPILE`)."""
  lowered = lowered_iteration(config, devices)
  return lowered.compile(compiler_options=FAST_COMPILE if fast else None).as_text()


def lowered_iteration(config, devices: int, device_rewards: bool = True):
  """The training iteration `config` compiles on `devices` devices, lowered (built as
  `train.train` builds it, its rewards included; device_rewards=False: graded on the host)."""
  from flax import nnx

  from jaxdistill import methods, parallel, settings, tasks, train
  from jaxdistill.tasks import rewards
  from jaxdistill.train.loop import feeder
  from jaxdistill.train.state import initial_state
  from jaxdistill.warmstart.initial_model import load_model_and_tokenizer
  from jaxdistill.models.qwen2 import compute_copy
  with tempfile.TemporaryDirectory() as workdir:
    model, tokenizer = load_model_and_tokenizer(config, workdir)
    task = tasks.from_config(config)
    train_split, _, _ = task.splits(os.path.join(workdir, "data"), config.task.data_seed,
                                    config.task.train_size, config.task.validation_size,
                                    config.task.test_size)
  mesh = parallel.make_mesh(devices, fsdp=config.parallel.fsdp)
  spec = settings.iteration(config, tokenizer, task.step_delimiter, model.config.vocab_size)
  graphdef, optimizer, state, ref_params, layout = initial_state(model, spec, 0, mesh)
  reward = rewards.task_reward_fn(task, tokenizer, train_split, dense=config.reward.dense,
                                  device=device_rewards)
  dense = rewards.task_reward_fn(task, tokenizer, train_split, dense=True, device=device_rewards)
  schedule = methods.get(config.algo).schedule(config, spec, task, tokenizer, train_split)
  program = train.build_iteration(graphdef, optimizer, spec, reward, dense, mesh, layout,
                                  with_rows=schedule is not None)
  ids = extras = None
  if schedule is not None:  # its first round's problems and arrays (runs its filter)
    policy = lambda: nnx.merge(graphdef, compute_copy(state.params, config.model.dtype))
    ids, extras, _ = schedule.before(0, policy)
  feed = feeder(config, task, tokenizer, train_split, mesh)
  return program.phases["iteration"].lower(state, ref_params, *feed(0, 0, ids, extras))


def check(algo: str, fsdp: int, remat: bool, devices: int, fast: bool = True) -> dict:
  """One row: what `hlo_collectives.analyze` finds in the program, and whether it passes."""
  import time

  from jaxdistill.bench import hlo_collectives
  started = time.perf_counter()
  report = hlo_collectives.analyze(iteration_hlo(tiny_config(algo, fsdp, remat), devices,
                                                 fast))
  allowed = cpu_threads.THREADS_PER_DEVICE
  return {"algo": algo, "fsdp": fsdp, "remat": remat, **report.as_dict(),
          "threads_per_device": allowed,
          "ok": not report.divergent and report.blocked_threads <= allowed,
          "compile_s": time.perf_counter() - started}


COLUMNS = ["algo", "fsdp", "remat", "collectives", "loops_with_collectives", "blocked_threads",
           "threads_per_device", "ok", "compile_s"]


def main(argv):
  del argv
  ensure_cpu_devices(FLAGS.devices, "jaxdistill.bench.collectives")
  rows = []
  for algo in FLAGS.methods:
    for fsdp in map(int, FLAGS.fsdp):
      for remat in (value.lower() in ("1", "true") for value in FLAGS.remat):
        rows.append(check(algo, fsdp, remat, FLAGS.devices, FLAGS.fast))
        print_table(rows[-1:], COLUMNS)
  print(f"\n{FLAGS.devices} CPU devices; blocked_threads: the most threads of one device "
        "blocked in collectives at once (an upper bound); threads_per_device: what "
        "jaxdistill.cpu_threads gives XLA:CPU")
  print_table(rows, COLUMNS)
  for row in rows:
    for line in row["divergent"]:
      print(f"DIVERGENT {row['algo']} fsdp={row['fsdp']} remat={row['remat']}: {line}")
    for line in row["overlaps"]:
      print(f"overlap {row['algo']} fsdp={row['fsdp']} remat={row['remat']}: {line}")
  write_json(FLAGS.out, {"devices": FLAGS.devices, "rows": rows})
  if not all(row["ok"] for row in rows):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
