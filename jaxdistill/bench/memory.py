r"""What a training run needs in one device's memory at real Qwen2.5 shapes, without weights.

    python -m jaxdistill.bench.memory --config countdown.py:qwen2.5-7b --devices 8 \
        [--fsdp 8] [--device_memory_gb 80] [--algos mcts_distill,cispo] [--breakdown]
    python -m jaxdistill.bench.memory --learner_table [--logit_chunks 0,1024]
        [--remat preset,false]

The planner (default) builds the preset's training iteration (search or sampling, learner-batch
assembly, update: `train.build_iteration`, the program a run compiles) for --devices fake CPU
devices with parameters, gradients and Adam moments split over --fsdp of them
(`parallel.fsdp`), compiles it from abstract shapes (no weights are made) and reads XLA's
`memory_analysis()` of the compiled per-device program: peak = arguments + outputs - aliased
+ temporaries. The per-device bytes of parameters, optimizer state, gradients and the KL
reference follow from the layout; with --breakdown the three phases are compiled on their own
too (`train.build_phases`, `train.phase_timing=True`), and the rollout's temporaries are
split by what holds them, from shapes: the search's tree (`Method.search_tree`, traced), the
KV cache of its largest LM call (`Method.kv_slots`), the compute-dtype weights it reads, and
the rest of the compiled total (logits, sampling and search scratch); the update's
temporaries are its gradients, activations and scratch. A run fits when the fused program's
peak is under --device_memory_gb; a layout whose state (parameters, Adam, gradients, KL
reference) alone exceeds it is reported so without compiling. The architecture is the
preset's published Hugging Face config (`qwen2.ARCHITECTURES`), vocabulary included. These
are the CPU compiler's numbers (it runs bf16 collectives and dots in fp32): an accelerator's
compiler schedules (and so overlaps) buffers its own way, so leave a margin.

--learner_table compiles the update alone (`learner.update`) for each `learner.logit_chunk`
and `learner.remat`, for the preset's per-device learner batch: what chunked log-probs and
rematerialisation save.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from jaxdistill.bench.common import ensure_cpu_devices, load_preset, print_table, write_json


def define_flags():
  """The command's flags (defined only when it runs: the planner's functions are imported
  beside other commands' flags, e.g. by the tests)."""
  flags.DEFINE_string("config", "countdown.py:qwen2.5-0.5b", "config file and preset")
  flags.DEFINE_list("algos", ["mcts_distill", "cispo"], "methods whose learner batch to use")
  flags.DEFINE_list("logit_chunks", ["0", "1024"], "learner.logit_chunk values (0: unchunked)")
  flags.DEFINE_list("remat", ["preset"], "learner.remat values: preset | true | false")
  flags.DEFINE_integer("devices", 1, "devices the preset's prompts split over")
  flags.DEFINE_integer("fsdp", 1, "devices parameters and optimizer state are split over")
  flags.DEFINE_float("device_memory_gb", 80.0, "one device's memory (GiB), for 'fits'")
  flags.DEFINE_bool("breakdown", False, "also compile the rollout, assembly and update alone")
  flags.DEFINE_bool("learner_table", False, "compile the update alone per logit_chunk and remat")
  flags.DEFINE_multi_string("set", [], "config overrides, e.g. --set=search.reuse_kv=True "
                            "(the qwen2.5-7b preset turns the search's KV pool off)")
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


def _bytes(tree, specs=None, fsdp: int = 1) -> int:
  """Per-device bytes of a tree of arrays, leaves whose spec splits them counted 1/fsdp."""
  from jax.sharding import PartitionSpec as P
  leaves = jax.tree.leaves(tree)
  split = ([False] * len(leaves) if specs is None else
           [spec != P() for spec in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))])
  return sum(int(np.prod(x.shape)) * x.dtype.itemsize // (fsdp if s else 1)
             for x, s in zip(leaves, split))


def _abstract(tree, mesh, specs):
  from jax.sharding import NamedSharding, PartitionSpec as P
  return jax.tree.map(lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                           sharding=NamedSharding(mesh, spec)),
                      tree, specs, is_leaf=lambda x: isinstance(x, P))


def _rows(tree, mesh):
  """tree's leaves as split over every device (a batch's layout)."""
  from jax.sharding import PartitionSpec as P
  from jaxdistill import parallel
  return _abstract(tree, mesh, jax.tree.map(lambda _: P(parallel.ROWS), tree))


def _peak(compiled) -> tuple[float, float]:
  """(peak, temporaries) in bytes of a compiled program, per device."""
  memory = compiled.memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return peak, memory.temp_size_in_bytes


def rollout_buffers(graphdef, params, arch, config, algo: str, spec, devices: int,
                    fsdp: int) -> dict:
  """Per-device bytes of what the rollout phase holds, from shapes alone: the search's tree
  (`Method.search_tree`, traced), the KV cache of its largest LM call (`Method.kv_slots`
  slots) and the compute-dtype weights it reads (a gathered copy under fsdp, a cast copy
  when they are stored in another dtype)."""
  from jaxdistill import methods
  from jaxdistill.models.qwen2 import KVCache, compute_copy
  method = methods.get(algo)
  dtype = jnp.dtype(config.model.dtype)
  prompts, width = config.train.prompts_per_iteration // devices, config.task.prompt_width
  whole = jax.eval_shape(lambda p: compute_copy(p, dtype), params)
  copied = [w for w, p in zip(jax.tree.leaves(whole), jax.tree.leaves(params))
            if fsdp > 1 or w.dtype != p.dtype]
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  tree = jax.eval_shape(
      lambda p, tokens, lengths, problems, keys: method.search_tree(
          graphdef, p, tokens, lengths, problems, keys, spec, lambda *_: 0.0),
      whole, i32(prompts, width), i32(prompts), i32(prompts),
      jax.eval_shape(lambda: jax.random.split(jax.random.key(0), prompts)))
  slots = method.kv_slots(prompts, width, spec)
  cache = jax.eval_shape(lambda: KVCache.empty(arch, 1, slots, dtype))
  return {"tree_gb": _bytes(tree) / GB, "kv_cache_gb": _bytes(cache) / GB,
          "rollout_weights_gb": _bytes(copied) / GB}


def iteration_memory(config, algo: str, devices: int, fsdp: int, breakdown: bool = False,
                     device_memory_gb: float = 80.0, arch=None) -> dict:
  """One row of the planner: the training iteration of `config` with `algo` compiled for
  `devices` devices, parameters split over `fsdp` of them; arch: the model's Qwen2Config
  (default: the preset's published one)."""
  from jaxdistill import methods, parallel, settings, train
  from jaxdistill.train.layout import Layout
  from jaxdistill.models.qwen2 import ARCHITECTURES, compute_copy, init_model
  from jaxdistill.rl import learner
  config = config.copy_and_resolve_references()
  config.algo, config.parallel.fsdp = algo, fsdp
  from jaxdistill.methods.base import Method
  if type(methods.get(algo)).schedule is not Method.schedule:
    raise app.UsageError(f"{algo} picks its problems on the host between iterations; the "
                         "planner builds only methods without a schedule")
  arch = arch or ARCHITECTURES[config.preset]
  spec = settings.iteration(config)  # shapes only: no tokenizer
  mesh = parallel.make_mesh(devices, fsdp=fsdp)
  dtype, param_dtype = jnp.dtype(config.model.dtype), jnp.dtype(config.model.param_dtype)
  model = nnx.eval_shape(lambda: init_model(arch, dtype=dtype, param_dtype=param_dtype,
                                            precision=config.model.precision))
  graphdef, params = nnx.split(model)
  ref_params = jax.eval_shape(lambda p: compute_copy(p, dtype), params)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  state = jax.eval_shape(lambda p, k: learner.init_state(
      p, learner.make_optimizer(spec.learner), k), params, key)
  layout = Layout(state, ref_params, mesh, spec.compute_dtype)
  optimizer = learner.make_optimizer(
      spec.learner, square_norm=None if layout.fsdp is None else layout.fsdp.square_norm)
  reward = lambda tokens, problem: 0.0  # never called: the program is compiled, not run
  prompts, width = config.train.prompts_per_iteration, config.task.prompt_width
  feed = _rows((jax.ShapeDtypeStruct((prompts, width), jnp.int32),
                jax.ShapeDtypeStruct((prompts,), jnp.int32),
                jax.ShapeDtypeStruct((prompts,), jnp.int32),
                jax.ShapeDtypeStruct((prompts, 2), jnp.uint32)), mesh)  # raw key data, as fed
  state_in = _abstract(state, mesh, layout.state)
  ref_in = _abstract(ref_params, mesh, layout.ref)
  row = {"algo": algo, "devices": devices, "fsdp": fsdp,
         "params_gb": _bytes(state.params, layout.state.params, fsdp) / GB,
         "opt_state_gb": _bytes(state.opt_state, layout.state.opt_state, fsdp) / GB,
         "grads_gb": _bytes(state.params, layout.state.params, fsdp) / GB,
         "ref_gb": _bytes(ref_params, layout.ref, fsdp) / GB}
  row["state_gb"] = sum(row[k] for k in ("params_gb", "opt_state_gb", "grads_gb", "ref_gb"))
  if row["state_gb"] > device_memory_gb:  # no compile can change that: say so in seconds
    return row | {"fits": False, "note": "the state alone does not fit; not compiled"}
  started = time.perf_counter()
  fused = train.build_iteration(graphdef, optimizer, spec, reward, reward, mesh, layout)
  peak, temp = _peak(fused.phases["iteration"].lower(state_in, ref_in, *feed, {}).compile())
  row |= {"iteration_temp_gb": temp / GB, "peak_gb": peak / GB}
  if breakdown:
    phases = train.build_phases(graphdef, optimizer, spec, reward, reward, mesh, layout).phases
    rollout_args = (state_in.params, *feed, {})
    traj = _rows(jax.eval_shape(phases["rollout"], *rollout_args), mesh)
    batch = _rows(jax.eval_shape(phases["assemble"], state_in.params, ref_in, traj), mesh)
    for name, args in (("rollout", rollout_args), ("assemble", (state_in.params, ref_in, traj)),
                       ("update", (state_in, batch, traj))):
      phase_peak, phase_temp = _peak(phases[name].lower(*args).compile())
      row |= {f"{name}_temp_gb": phase_temp / GB, f"{name}_peak_gb": phase_peak / GB}
    # the rollout's temporaries split by what holds them; the rest (logits, sampling and
    # search scratch) is what the compiled total leaves
    row |= rollout_buffers(graphdef, params, arch, config, algo, spec, devices, fsdp)
    row["rollout_other_gb"] = row["rollout_temp_gb"] - sum(
        row[k] for k in ("tree_gb", "kv_cache_gb", "rollout_weights_gb"))
  row |= {"fits": bool(row["peak_gb"] <= device_memory_gb),
          "compile_s": time.perf_counter() - started}
  return row


PLAN_COLUMNS = ["algo", "devices", "fsdp", "params_gb", "opt_state_gb", "grads_gb", "ref_gb",
                "state_gb", "tree_gb", "kv_cache_gb", "rollout_weights_gb", "rollout_other_gb",
                "rollout_temp_gb", "assemble_temp_gb", "update_temp_gb",
                "iteration_temp_gb", "peak_gb", "fits", "compile_s", "note"]


def main(argv):
  del argv
  from jaxdistill.configs.countdown import apply_overrides
  config = apply_overrides(load_preset(FLAGS.config), FLAGS.set)  # OverrideError: usage
  from jaxdistill.models.qwen2 import ARCHITECTURES
  if config.preset not in ARCHITECTURES:
    raise app.UsageError(f"--config needs a Qwen2.5 preset, got {config.preset!r}")
  if config.train.prompts_per_iteration % FLAGS.devices:
    raise app.UsageError(f"{config.train.prompts_per_iteration} prompts do not split over "
                         f"{FLAGS.devices} devices")
  if FLAGS.fsdp < 1 or FLAGS.devices % FLAGS.fsdp:
    raise app.UsageError(f"--fsdp={FLAGS.fsdp} must divide --devices={FLAGS.devices}")
  ensure_cpu_devices(FLAGS.devices, "jaxdistill.bench.memory")
  if not FLAGS.learner_table:
    rows = []
    for algo in FLAGS.algos:
      rows.append(iteration_memory(config, algo, FLAGS.devices, FLAGS.fsdp, FLAGS.breakdown,
                                   FLAGS.device_memory_gb))
      print_table(rows[-1:], [c for c in PLAN_COLUMNS if c in rows[-1]])
    print(f"\n{config.preset}: {config.train.prompts_per_iteration} prompts over "
          f"{FLAGS.devices} device(s), parameters split over {FLAGS.fsdp}; per-device GiB of "
          f"the compiled iteration; fits: peak <= {FLAGS.device_memory_gb:g} GiB")
    print_table(rows, [c for c in PLAN_COLUMNS if any(c in r for r in rows)])
    write_json(FLAGS.out, {"config": FLAGS.config, "set": FLAGS.set, "devices": FLAGS.devices,
                           "fsdp": FLAGS.fsdp, "device_memory_gb": FLAGS.device_memory_gb,
                           "rows": rows})
    return
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
  write_json(FLAGS.out, {"config": FLAGS.config, "set": FLAGS.set, "devices": FLAGS.devices,
                         "rows": rows})


if __name__ == "__main__":
  define_flags()
  app.run(main)
