"""Where a training iteration's time goes: rollout (search or sampling), learner-batch
assembly and update, each jitted and timed on its own.

    python -m jaxdistill.bench.iteration [--shapes qwen1.5b] [--algos mcts_distill,cispo]

Per phase: seconds (median of the timed iterations, after one compile iteration), generated
tokens/s (rollout), achieved FLOP/s from the program's own accounting (positions the LM runs
on, static shapes, times forward FLOPs per position; the update counts forward + backward
as 3 forwards) and its share of the device's measured bf16 matmul rate. `--shapes
qwen1.5b` is Qwen2.5-1.5B's body (hidden 1536, 28 layers, 12/2 heads, bf16) with the
character vocabulary and random weights: the compute of the reference model, no download.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from jaxdistill.bench.common import print_table, write_json


def define_flags():
  """The command's flags, defined only when it runs (its functions may be imported beside
  other commands' flags, such as jaxdistill.main's --out)."""
  flags.DEFINE_enum("shapes", "tiny", ["tiny", "qwen1.5b"], "model shapes")
  flags.DEFINE_list("algos", ["mcts_distill", "cispo"], "methods to time")
  flags.DEFINE_integer("iterations", 3, "timed iterations (after one that compiles)")
  flags.DEFINE_integer("prompts", 16, "prompts per iteration")
  flags.DEFINE_integer("agents", 16, "search agents per tree (mcts_distill)")
  flags.DEFINE_integer("search_iterations", 8, "search iterations (mcts_distill)")
  flags.DEFINE_integer("minibatches", 0, "learner minibatches (0: 4 at qwen1.5b shapes, where "
                       "one backward of the whole batch does not fit in 80 GB, else 1)")
  flags.DEFINE_string("out", "bench_results/iteration.json", "JSON output")


FLAGS = flags.FLAGS


def _config(shapes: str, algo: str):
  from jaxdistill.configs.countdown import get_config
  config = get_config("tiny")
  config.algo = algo
  config.train.prompts_per_iteration = FLAGS.prompts
  config.search.num_agents, config.search.num_iterations = FLAGS.agents, FLAGS.search_iterations
  if shapes == "qwen1.5b":
    m = config.model
    m.hidden_size, m.intermediate_size, m.num_hidden_layers = 1536, 8960, 28
    m.num_attention_heads, m.num_key_value_heads, m.dtype = 12, 2, "bfloat16"
    config.task.numbers, config.task.prompt_width = 4, 48
    config.search.max_step_tokens, config.search.max_path_tokens = 64, 512
    config.rollout.max_completion_tokens = 256
  config.learner.minibatches = FLAGS.minibatches or (4 if shapes == "qwen1.5b" else 1)
  return config


def measured_matmul_flops() -> float:
  """bf16 8192^3 matmul rate on this device (the compute ceiling the shares refer to)."""
  n = 8192 if jax.default_backend() == "gpu" else 1024
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / min(times)


def time_phases(shapes: str, algo: str, peak: float):
  """Per-phase rows for one method."""
  from jaxdistill.warmstart.initial_model import load_model_and_tokenizer
  from jaxdistill import methods, settings, tasks
  from jaxdistill.train import cost
  from jaxdistill.evaluate import encode_prompts
  from jaxdistill.models.qwen2 import compute_copy, forward_flops_per_token
  from jaxdistill.tasks import rewards
  from jaxdistill.rl import learner
  from jaxdistill.rl.batch import assemble_batch
  import tempfile
  config = _config(shapes, algo)
  task = tasks.from_config(config)
  with tempfile.TemporaryDirectory() as workdir:
    model, tokenizer = load_model_and_tokenizer(config, workdir)
    problems, _, _ = task.splits(workdir, 0, 512, 0, 16)
  spec = settings.iteration(config, tokenizer, task.step_delimiter, model.config.vocab_size)
  graphdef, params = nnx.split(model)
  optimizer = learner.make_optimizer(spec.learner)
  state = learner.init_state(params, optimizer, jax.random.PRNGKey(0))
  ref_params = compute_copy(params, spec.compute_dtype)
  reward_fn = rewards.task_reward_fn(task, tokenizer, problems, dense=True)
  method = methods.get(algo)
  produce = lambda p, t, l, ids, keys: method.rollout(graphdef, p, t, l, ids, keys, spec,
                                                      reward_fn, reward_fn)
  rollout = jax.jit(produce)
  assemble = jax.jit(lambda p, r, traj: assemble_batch(
      graphdef, p, r, traj, spec.advantage, spec.rollout.group_size, spec.learner))
  update = jax.jit(lambda s, b: learner.update(s, b, graphdef=graphdef, optimizer=optimizer,
                                               config=spec.learner))
  prompts = config.train.prompts_per_iteration
  context = config.task.prompt_width + spec.rollout.max_completion_tokens // 2
  flops = cost.phase_flops(spec, prompts, config.task.prompt_width,
                            forward_flops_per_token(model.config, context))
  seconds = {phase: [] for phase in flops}
  generated, first = [], {}
  for step in range(FLAGS.iterations + 1):
    ids = [(step * prompts + i) % len(problems) for i in range(prompts)]
    tokens, lengths = encode_prompts(task, tokenizer, [problems[i] for i in ids],
                                     config.task.prompt, config.task.prompt_width)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(step), i))(jnp.arange(prompts))
    times = {}
    start = time.perf_counter()
    traj = jax.block_until_ready(rollout(compute_copy(state.params, spec.compute_dtype),
                                         tokens, lengths,
                                         jnp.asarray(ids, jnp.int32), keys))
    times["rollout"] = time.perf_counter() - start
    start = time.perf_counter()
    batch = jax.block_until_ready(assemble(state.params, ref_params, traj))
    times["assemble"] = time.perf_counter() - start
    start = time.perf_counter()
    state, _ = jax.block_until_ready(update(state, batch))
    times["update"] = time.perf_counter() - start
    if step == 0:
      first = times
      continue
    for phase, value in times.items():
      seconds[phase].append(value)
    generated.append(int(traj.generated_tokens))
  table = []
  for phase in flops:
    median = statistics.median(seconds[phase])
    row = {"algo": algo, "phase": phase, "seconds": median, "first_s": first[phase],
           "tflop_per_s": flops[phase] / median / 1e12, "share_of_peak": flops[phase] / median / peak}
    if phase == "rollout":
      row["tokens_per_s"] = float(np.median(generated)) / median
    table.append(row)
  total = sum(r["seconds"] for r in table)
  table.append({"algo": algo, "phase": "iteration", "seconds": total,
                "first_s": sum(first.values()),
                "tflop_per_s": sum(flops.values()) / total / 1e12,
                "share_of_peak": sum(flops.values()) / total / peak})
  return table


def main(argv):
  del argv
  peak = measured_matmul_flops()
  rows = []
  for algo in FLAGS.algos:
    rows += time_phases(FLAGS.shapes, algo, peak)
  print(f"shapes {FLAGS.shapes}, {FLAGS.prompts} prompts/iteration, search {FLAGS.agents} agents"
        f" x {FLAGS.search_iterations} iterations; measured bf16 matmul peak "
        f"{peak / 1e12:.0f} TFLOP/s")
  print_table(rows, ["algo", "phase", "seconds", "first_s", "tokens_per_s", "tflop_per_s",
                     "share_of_peak"])
  write_json(FLAGS.out, {"shapes": FLAGS.shapes, "prompts": FLAGS.prompts,
                         "peak_flop_per_s": peak, "rows": rows})


if __name__ == "__main__":
  define_flags()
  app.run(main)
