"""Search-kernel benchmark.

    python -m jaxdistill.bench.search [--quick]
    python -m jaxdistill.bench.search --kv_reuse   (search.reuse_kv off and on: bench/search_kv.py)

(i)   tree operations only (a synthetic expand function), over a grid of B, K, W and
      iterations: simulations/s and compile time, next to mctx.muzero_policy and mctx.search
      with pUCT selection on the same shapes (W = 1), in one run;
(ii)  with the tiny LM: whole search time vs the same search with a free expand function of
      the same output shapes, i.e. the share of tree operations in search time;
(iii) peak memory of each compiled search (XLA memory analysis: arguments + temporaries);
and a check that the search compiled under shard_map has no cross-device collectives.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import mctx
import numpy as np
from absl import app, flags
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdistill import parallel
from jaxdistill.bench.common import best_time, print_table, write_json
from jaxdistill.search import lm_expand, mcts
from jaxdistill.search.tree import ExpandOutput, RootOutput


def define_flags():
  """The command's flags (defined only when it runs: its functions are imported beside
  other commands' flags, e.g. jaxdistill.main's --out, by the tests)."""
  flags.DEFINE_bool("quick", False, "a small grid (a first check)")
  flags.DEFINE_string("out", "bench_results/search.json", "JSON output")
  flags.DEFINE_string("trace", "", "directory: profile ours and mctx.search (B=8, K=4, W=1, "
                      "256 simulations) and print where device time goes")
  flags.DEFINE_list("agents", ["1", "4", "16"], "agents per tree (W) in the grid")
  flags.DEFINE_integer("loop_unroll", 0, "tree levels per loop iteration (0: the default)")
  flags.DEFINE_bool("tree_ops_only", False, "only the tree-operations grid (skip the LM share "
                    "and the collectives check)")
  flags.DEFINE_bool("kv_reuse", False, "only the LM search's cost per simulation with "
                    "search.reuse_kv off and on (jaxdistill/bench/search_kv.py)")
  flags.DEFINE_list("kv_shapes", ["qwen2.5-0.5b", "qwen2.5-1.5b"], "--kv_reuse: presets whose "
                    "shapes are counted and compiled (abstract weights)")
  flags.DEFINE_string("kv_speed_shape", "qwen2.5-0.5b", "--kv_reuse: preset whose shapes are "
                      "timed with random weights ('': skip)")
  flags.DEFINE_integer("kv_speed_iterations", 2, "--kv_reuse: search iterations timed")
  flags.DEFINE_integer("kv_speed_agents", 2, "--kv_reuse: agents per iteration timed")
  flags.DEFINE_integer("kv_step_tokens", 16, "--kv_reuse: tokens a step really has (16: the "
                       "mean of the default task's solver-written step lines in Qwen2.5's "
                       "tokenizer)")
  flags.DEFINE_string("kv_out", "results/search_kv_reuse.json", "--kv_reuse: JSON output")


FLAGS = flags.FLAGS

COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def synthetic(batch, num_actions):
  """A cheap deterministic environment: state hashes give priors and values."""

  def evaluate(state):
    x = (state[:, None] * jnp.uint32(2654435761) + jnp.arange(num_actions, dtype=jnp.uint32))
    logits = ((x >> 8) & 0xFFFF).astype(jnp.float32) / 65536.0 * 4.0 - 2.0
    value = ((state * jnp.uint32(40503)) >> 16).astype(jnp.float32) / 65536.0 * 2.0 - 1.0
    return logits, value

  def expand_fn(keys, state, action):
    del keys
    state = state * jnp.uint32(num_actions + 1) + action.astype(jnp.uint32) + 1
    logits, value = evaluate(state)
    zeros = jnp.zeros_like(value)
    return ExpandOutput(prior_logits=logits, value=value, reward=zeros,
                        terminal=zeros > 1.0, discount=zeros + 1.0), state

  def recurrent_fn(params, rng, action, state):
    del params, rng
    state = state * jnp.uint32(num_actions + 1) + action.astype(jnp.uint32) + 1
    logits, value = evaluate(state)
    return mctx.RecurrentFnOutput(reward=jnp.zeros_like(value), discount=jnp.ones_like(value),
                                  prior_logits=logits, value=value), state

  state = jnp.arange(batch, dtype=jnp.uint32) + 7
  logits, value = evaluate(state)
  return RootOutput(prior_logits=logits, value=value, embedding=state), expand_fn, recurrent_fn


def _timed(fn, *args):
  """(compile seconds, best run seconds, peak bytes) of jit(fn)(*args)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  peak = None if memory is None else int(memory.argument_size_in_bytes +
                                         memory.temp_size_in_bytes + memory.output_size_in_bytes)
  jax.block_until_ready(compiled(*args))
  return compile_s, best_time(lambda: jax.block_until_ready(compiled(*args))), peak


def mctx_puct(recurrent_fn, sims):
  """mctx.search with the same pUCT selection as ours (raw Q, c_puct 0.5, no log term)."""
  selection = functools.partial(mctx.muzero_action_selection, pb_c_init=0.5, pb_c_base=1e30,
                                qtransform=lambda t, n: t.qvalues(n))
  return lambda r, k: mctx.search((), k, root=r, recurrent_fn=recurrent_fn,
                                  root_action_selection_fn=lambda kk, t, n: selection(
                                      kk, t, n, 0),
                                  interior_action_selection_fn=selection,
                                  num_simulations=sims)


def trace_tree_ops(log_dir, batch=8, num_actions=4, sims=256):
  """Device-time summaries of ours and mctx.search on one W=1 shape."""
  from jaxdistill.bench import trace
  root, expand_fn, recurrent_fn = synthetic(batch, num_actions)
  keys = jax.random.split(jax.random.key(0), batch)
  ours = jax.jit(lambda r, k: mcts.search(r, expand_fn, k, num_iterations=sims, num_agents=1))
  mroot = mctx.RootFnOutput(prior_logits=root.prior_logits, value=root.value,
                            embedding=root.embedding)
  theirs = jax.jit(mctx_puct(recurrent_fn, sims))
  for name, fn, args in (("ours", ours, (root, keys)),
                         ("mctx.search", theirs, (mroot, jax.random.key(0)))):
    jax.block_until_ready(fn(*args))
    rows, totals = trace.profile(lambda: jax.block_until_ready(fn(*args)),
                                 f"{log_dir}/{name}")
    trace.print_summary(rows[:12], totals, title=f"{name}: B={batch} K={num_actions} W=1 "
                        f"{sims} simulations")


def tree_ops_grid(grid, loop_unroll: int = 0):
  """Rows of simulations/s (and mctx's at W = 1) for (B, K, W, I) shapes; loop_unroll 0: the
  search's default."""
  rows = []
  for batch, num_actions, agents, iterations in grid:
    root, expand_fn, recurrent_fn = synthetic(batch, num_actions)
    keys = jax.random.split(jax.random.key(0), batch)
    sims = iterations * agents
    unroll = dict(loop_unroll=loop_unroll) if loop_unroll else {}
    ours = lambda r, k: mcts.search(r, expand_fn, k, num_iterations=iterations,
                                    num_agents=agents, **unroll)
    compile_s, seconds, peak = _timed(ours, root, keys)
    row = {"B": batch, "K": num_actions, "W": agents, "I": iterations, "sims": sims,
           "ours_sims_per_s": batch * sims / seconds, "ours_compile_s": compile_s,
           "ours_peak_mb": (peak or 0) / 2**20}
    if agents == 1:
      mroot = mctx.RootFnOutput(prior_logits=root.prior_logits, value=root.value,
                                embedding=root.embedding)
      muzero = lambda r, k: mctx.muzero_policy((), k, r, recurrent_fn, num_simulations=sims)
      compile_s, seconds, _ = _timed(muzero, mroot, jax.random.key(0))
      row |= {"mctx_muzero_sims_per_s": batch * sims / seconds, "mctx_compile_s": compile_s}
      _, seconds, _ = _timed(mctx_puct(recurrent_fn, sims), mroot, jax.random.key(0))
      row["mctx_search_puct_sims_per_s"] = batch * sims / seconds
      row["ours_vs_muzero"] = row["ours_sims_per_s"] / row["mctx_muzero_sims_per_s"]
    rows.append(row)
  return rows


def lm_share(batch, agents, iterations):
  """Share of tree operations in an LM-backed search (tiny model, K=4, L=16)."""
  from jaxdistill.models import Qwen2Config, init_model
  config = lm_expand.LMSearchSettings(num_children=4, max_step_tokens=16, max_path_tokens=96,
                                    temperature=0.8, length_normalized_prior=False,
                                    dedup_children=False, rollout_to_end=False,
                                    max_rollout_tokens=0, branch_at="step", step_end_id=2,
                                    eos_id=1, pad_id=0)
  model = init_model(Qwen2Config(vocab_size=64, hidden_size=128, intermediate_size=384,
                                 num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2), seed=0)
  graphdef, params = nnx.split(model)
  reward = lambda tokens, problem: 0.0
  rng = np.random.RandomState(0)
  prompts = jnp.asarray(rng.randint(3, 64, (batch, 24)), jnp.int32)
  lengths = jnp.full((batch,), 24, jnp.int32)
  keys = jax.random.split(jax.random.key(0), batch)
  root = lm_expand.root_output(model, config, prompts, lengths, jnp.arange(batch), keys, reward)
  expand_fn = lm_expand.make_expand_fn(graphdef, params, config, reward)
  run = lambda r, k: mcts.search(r, expand_fn, k, num_iterations=iterations, num_agents=agents)
  _, total, peak = _timed(run, root, keys)

  def free_expand(keys, parent, action):  # same output shapes, no LM
    child, _ = lm_expand.append_step(config, parent, action)
    zeros = jnp.zeros(action.shape, jnp.float32)
    return ExpandOutput(prior_logits=parent.candidate_logprobs, value=zeros, reward=zeros,
                        terminal=zeros > 1.0, discount=zeros + 1.0), child

  free = lambda r, k: mcts.search(r, free_expand, k, num_iterations=iterations,
                                  num_agents=agents)
  _, tree_only, _ = _timed(free, root, keys)
  return {"B": batch, "W": agents, "I": iterations, "search_s": total, "tree_ops_s": tree_only,
          "tree_ops_share": tree_only / total, "peak_mb": (peak or 0) / 2**20}


def collectives_check(batch=16):
  devices = jax.devices()
  mesh = Mesh(np.array(devices), ("data",))
  root, expand_fn, _ = synthetic(batch * len(devices), 4)
  run = lambda r, k: mcts.search(r, expand_fn, k, num_iterations=8, num_agents=4)
  sharded = jax.jit(parallel.shard_map(run, mesh, in_specs=P("data"), out_specs=P("data")))
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  keys = jax.random.split(jax.random.key(0), batch * len(devices))
  hlo = sharded.lower(put(root), put(keys)).compile().as_text()
  found = [c for c in COLLECTIVES if c in hlo]
  return {"devices": len(devices), "collectives": found}


def main(argv):
  del argv
  if FLAGS.kv_reuse:
    from jaxdistill.bench import search_kv
    search_kv.report(FLAGS.kv_shapes, FLAGS.kv_speed_shape, FLAGS.kv_step_tokens, FLAGS.kv_out,
                     FLAGS.kv_speed_iterations, FLAGS.kv_speed_agents)
    return
  if FLAGS.quick:
    grid = [(8, 4, 1, 64), (8, 4, 4, 16)]
    lm = [(8, 4, 4)]
  else:
    grid = [(b, k, int(w), 256 // int(w)) for b in (8, 64) for k in (4, 16)
            for w in FLAGS.agents]
    lm = [(16, 1, 16), (16, 4, 4), (16, 16, 2)]
  rows = tree_ops_grid(grid, FLAGS.loop_unroll)
  for row in rows:
    if "mctx_search_puct_sims_per_s" in row:
      row["ours_vs_mctx_search"] = row["ours_sims_per_s"] / row["mctx_search_puct_sims_per_s"]
  print("(i) tree operations only (synthetic expand); sims/s counts all B trees")
  print_table(rows, ["B", "K", "W", "I", "ours_sims_per_s", "mctx_muzero_sims_per_s",
                     "mctx_search_puct_sims_per_s", "ours_vs_mctx_search", "ours_vs_muzero",
                     "ours_compile_s", "mctx_compile_s", "ours_peak_mb"])
  if FLAGS.trace:
    trace_tree_ops(FLAGS.trace)
  if FLAGS.tree_ops_only:
    write_json(FLAGS.out, {"tree_ops": rows})
    return
  lm_rows = [lm_share(*args) for args in lm]
  print("(ii) tiny LM (4 layers, hidden 128, K=4, L=16): share of tree operations")
  print_table(lm_rows, ["B", "W", "I", "search_s", "tree_ops_s", "tree_ops_share", "peak_mb"])
  check = collectives_check()
  print(f"(iii) shard_map over {check['devices']} device(s): collectives in HLO: "
        f"{check['collectives'] or 'none'}")
  write_json(FLAGS.out, {"tree_ops": rows, "lm": lm_rows, "collectives": check})


if __name__ == "__main__":
  define_flags()
  app.run(main)
