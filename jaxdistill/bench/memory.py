"""What the update needs in one device's memory at real Qwen2.5 shapes, without weights.

    python -m jaxdistill.bench.memory [--config countdown.py:qwen2.5-0.5b]
        [--algos mcts_distill,cispo] [--logit_chunks 0,1024] [--remat preset,false]
        [--devices 1]

For each method and `learner.logit_chunk` the learner's update (`learner.update`: forward,
chunked log-probs, backward, AdamW) is compiled from abstract shapes on the CPU and XLA's
`memory_analysis()` of the compiled program is read: parameters, optimizer state and the
batch come in as arguments, `temp` is everything the program allocates besides (activations
kept for the backward, logits, gradients). The batch is the preset's learner batch
(`Method.learner_shape`) split over --devices (data parallel: each device runs this
program on its share of the rows, then gradients are summed). The architecture is the
published Hugging Face config of the preset's model (`qwen2.ARCHITECTURES`), the vocabulary
included, so logit_chunk 0 shows what [B, T, 151,936] fp32 log-probs cost.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from jaxdistill.bench.common import load_preset, print_table, write_json

flags.DEFINE_string("config", "countdown.py:qwen2.5-0.5b", "config file and preset")
flags.DEFINE_list("algos", ["mcts_distill", "cispo"], "methods whose learner batch to use")
flags.DEFINE_list("logit_chunks", ["0", "1024"], "learner.logit_chunk values (0: unchunked)")
flags.DEFINE_list("remat", ["preset"], "learner.remat values: preset | true | false")
flags.DEFINE_integer("devices", 1, "data-parallel devices the preset's prompts split over")
flags.DEFINE_string("out", "bench_results/memory.json", "JSON output")
FLAGS = flags.FLAGS

GB = 1024 ** 3


def abstract_state(arch, config, learner_config):
  """ShapeDtypeStructs of the model's graph, params and the optimizer state (no weights)."""
  from jaxdistill.models.qwen2 import init_model
  from jaxdistill.rl import learner
  dtype, param_dtype = jnp.dtype(config.model.dtype), jnp.dtype(config.model.param_dtype)
  model = nnx.eval_shape(lambda: init_model(arch, dtype=dtype, param_dtype=param_dtype,
                                            precision=config.model.precision))
  graphdef, params = nnx.split(model)
  optimizer = learner.make_optimizer(learner_config)
  state = jax.eval_shape(lambda p: learner.init_state(p, optimizer, jax.random.key(0)), params)
  return graphdef, optimizer, state


def update_memory(config, algo: str, logit_chunk: int, devices: int,
                  remat: bool | None = None) -> dict:
  """One row: the compiled update's memory for the preset's per-device learner batch."""
  import dataclasses

  from jaxdistill import methods, settings
  from jaxdistill.models.qwen2 import ARCHITECTURES
  from jaxdistill.rl import learner
  config = config.copy_and_resolve_references()
  config.algo = algo
  arch = ARCHITECTURES[config.preset]
  spec = settings.iteration(config)  # shapes only: no tokenizer needed
  learner_config = dataclasses.replace(spec.learner, logit_chunk=logit_chunk)
  if remat is not None:
    learner_config = dataclasses.replace(learner_config, remat=remat)
  prompts = config.train.prompts_per_iteration // devices
  rows, width = methods.get(algo).learner_shape(prompts, config.task.prompt_width, spec)
  graphdef, optimizer, state = abstract_state(arch, config, learner_config)
  f32 = lambda: jax.ShapeDtypeStruct((rows, width - 1), jnp.float32)
  batch = learner.LearnerBatch(
      tokens=jax.ShapeDtypeStruct((rows, width), jnp.int32), mask=f32(), advantages=f32(),
      returns=f32(), old_logprobs=f32(),
      ref_logprobs=f32() if learner_config.kl_coef else None)
  update = jax.jit(lambda st, b: learner.update(st, b, graphdef=graphdef, optimizer=optimizer,
                                                config=learner_config), donate_argnums=(0,))
  started = time.perf_counter()
  compiled = update.lower(state, batch).compile()
  seconds = time.perf_counter() - started
  memory = compiled.memory_analysis()
  size = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize
                          for x in jax.tree.leaves(tree))
  arguments = memory.argument_size_in_bytes
  peak = arguments + memory.output_size_in_bytes - memory.alias_size_in_bytes + \
      memory.temp_size_in_bytes
  return {"algo": algo, "logit_chunk": logit_chunk, "remat": learner_config.remat,
          "rows": rows, "tokens": width,
          "params_gb": size(state.params) / GB, "opt_state_gb": size(state.opt_state) / GB,
          "batch_gb": size(batch) / GB, "arguments_gb": arguments / GB,
          "temp_gb": memory.temp_size_in_bytes / GB, "peak_gb": peak / GB,
          "logits_fp32_gb": rows * (width - 1) * arch.vocab_size * 4 / GB,
          "compile_s": seconds}


def main(argv):
  del argv
  config = load_preset(FLAGS.config)
  from jaxdistill.models.qwen2 import ARCHITECTURES
  if config.preset not in ARCHITECTURES:
    raise app.UsageError(f"--config needs a Qwen2.5 preset, got {config.preset!r}")
  if config.train.prompts_per_iteration % FLAGS.devices:
    raise app.UsageError(f"{config.train.prompts_per_iteration} prompts do not split over "
                         f"{FLAGS.devices} devices")
  rows = []
  remats = [None if r == "preset" else r.lower() in ("1", "true") for r in FLAGS.remat]
  for algo in FLAGS.algos:
    for remat in remats:
      for chunk in FLAGS.logit_chunks:
        rows.append(update_memory(config, algo, int(chunk), FLAGS.devices, remat))
        print_table(rows[-1:], list(rows[-1]))
  print(f"\n{config.preset}, model.dtype {config.model.dtype}, param_dtype "
        f"{config.model.param_dtype}, {config.train.prompts_per_iteration} prompts over "
        f"{FLAGS.devices} device(s); per-device GiB of the compiled update")
  print_table(rows, ["algo", "logit_chunk", "remat", "rows", "tokens", "params_gb", "opt_state_gb",
                     "batch_gb", "temp_gb", "peak_gb", "logits_fp32_gb", "compile_s"])
  write_json(FLAGS.out, {"config": FLAGS.config, "devices": FLAGS.devices, "rows": rows})


if __name__ == "__main__":
  app.run(main)
