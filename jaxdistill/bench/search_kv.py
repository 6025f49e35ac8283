r"""KV reuse in the LM search (`search.reuse_kv`): cost per simulation, reuse off and on.

    python -m jaxdistill.bench.search --kv_reuse [--kv_shapes=qwen2.5-0.5b,qwen2.5-1.5b] \
        [--kv_speed_shape=qwen2.5-0.5b] [--kv_step_tokens=16]

One simulation is one expansion row: the node's path is evaluated (off: its whole path
buffer prefilled, P tokens; on: only the appended step, L slots, attending to the path's KV
gathered from the tree) and K candidate steps are decoded from it. Per preset shape and
setting it reports
  * FLOPs per simulation counted from the shapes (static shapes, padding included): at the
    maximum step length (K x L decoded tokens) and at `--kv_step_tokens` (the decode loop
    stops when every row has ended its step; 16: the mean Qwen2.5 token count of the default
    task's solver-written step lines);
  * XLA's cost analysis of one expansion compiled from abstract shapes (no weights): FLOPs
    and bytes accessed per row. XLA counts a while loop's body once, so it is compared with
    the count for ONE decoded token per candidate (`counted_one_step`);
  * simulations per second on this machine at `--kv_speed_shape` with random weights (a few
    simulations of one tree; random weights never end a step, so every step is L tokens).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.search import lm_expand, mcts
from jaxdistill.search.tree import Lineage


def preset_search(preset: str, reuse: bool):
  """(preset config, its LMSearchSettings with reuse on or off, prompt width T)."""
  from jaxdistill import settings
  from jaxdistill.configs import countdown
  config = countdown.get_config(preset)
  config.search.reuse_kv = reuse
  lm = settings.search(config).lm
  return config, lm, config.task.prompt_width


def architecture(preset: str, config):
  """The preset's model: the published Qwen2.5 config, or the small model the config
  describes (tiny, tiny4, ...; the character tokenizer's vocabulary)."""
  from jaxdistill import tokenization
  from jaxdistill.warmstart.initial_model import small_architecture
  from jaxdistill.models.qwen2 import ARCHITECTURES
  if preset in ARCHITECTURES:
    return ARCHITECTURES[preset]
  return small_architecture(
      config, len(tokenization.SPECIAL_TOKENS + tuple(tokenization.CHARACTERS)))


def counted_flops(arch, lm: lm_expand.LMSearchSettings, prompt_width: int,
                  decoded_tokens: int) -> float:
  """Forward FLOPs of one expansion row (static shapes): the path's or step's prefill and K
  candidates of `decoded_tokens` tokens each. Matmuls 2 per multiply-add; attention over
  every slot of its cache (masked slots are computed too)."""
  c = arch
  attn = c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
  attn += c.num_attention_heads * c.head_dim * c.hidden_size
  body = 2.0 * c.num_hidden_layers * (attn + 3 * c.hidden_size * c.intermediate_size)
  per_slot = 4.0 * c.num_hidden_layers * c.num_attention_heads * c.head_dim  # q.k and p.v
  head = 2.0 * c.hidden_size * c.vocab_size
  wide = c.hidden_size * c.value_hidden_multiplier
  value = 2.0 * (2 * c.hidden_size * wide + c.hidden_size)
  steps, k, path = lm.max_step_tokens, lm.num_children, lm.max_path_tokens
  if lm.reuse_kv:  # L step slots after the path's P gathered slots
    prefilled, slots = steps, path + steps
  else:  # the whole path buffer, P slots
    prefilled, slots = path, path
  decode_slots = slots + steps  # the shared prefix and each candidate's own L slots
  prefill = prefilled * (body + per_slot * slots) + head + value
  decode = k * decoded_tokens * (body + per_slot * decode_slots + head)
  return prefill + decode


def _abstract_expansion(arch, lm, prompt_width: int, rows: int, nodes: int, dtype):
  """The expansion of `rows` rows compiled from abstract shapes: (compiled, seconds)."""
  from jaxdistill.models import init_model
  model = nnx.eval_shape(lambda: init_model(arch, dtype=dtype, param_dtype=dtype))
  graphdef, params = nnx.split(model)
  reward = lambda tokens, problem: 0.0  # compiled, never called
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  prompts, lengths = i32(1, prompt_width), i32(1)
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows))

  def root(p):
    m = nnx.merge(graphdef, p)
    return lm_expand.root_output(m, lm, jnp.zeros(prompts.shape, jnp.int32),
                                 jnp.ones(lengths.shape, jnp.int32), jnp.zeros((1,), jnp.int32),
                                 jax.random.split(jax.random.key(0), 1), reward)

  root_out = jax.eval_shape(root, params)
  per_row = lambda x: jax.ShapeDtypeStruct((rows,) + x.shape[1:], x.dtype)
  parent = jax.tree.map(per_row, root_out.embedding)
  args = [keys, parent, i32(rows)]
  if lm.reuse_kv:
    in_tree = lambda x: jax.ShapeDtypeStruct((1, nodes) + x.shape[1:], x.dtype)
    args.append(Lineage(embeddings=jax.tree.map(in_tree, root_out.embedding),
                        context=root_out.context, tree=i32(rows), node=i32(rows)))
  start = time.perf_counter()
  expand = lambda p, *a: lm_expand.make_expand_fn(graphdef, p, lm, reward)(*a)
  compiled = jax.jit(expand).lower(params, *args).compile()
  return compiled, time.perf_counter() - start


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return {"flops": float(cost.get("flops", 0.0)),
          "bytes": float(cost.get("bytes accessed", 0.0))}


def shape_rows(preset: str, step_tokens: int, rows: int = 4) -> list[dict]:
  """Counted and XLA-measured cost per simulation at a preset's shapes, reuse off and on."""
  out = []
  for reuse in (False, True):
    config, lm, width = preset_search(preset, reuse)
    arch = architecture(preset, config)
    nodes = 1 + config.search.num_iterations * config.search.num_agents
    compiled, compile_s = _abstract_expansion(arch, lm, width, rows, nodes,
                                              jnp.dtype(config.model.dtype))
    xla = _cost(compiled)
    one_step = counted_flops(arch, lm, width, 1)
    out.append({"shape": preset, "reuse_kv": reuse,
                "flops_per_simulation": counted_flops(arch, lm, width, lm.max_step_tokens),
                f"flops_per_simulation_at_{step_tokens}_tokens":
                    counted_flops(arch, lm, width, step_tokens),
                "counted_one_step": one_step, "xla_flops_one_step": xla["flops"] / rows,
                "xla_vs_counted": xla["flops"] / rows / one_step,
                "xla_bytes_one_step": xla["bytes"] / rows, "compile_s": compile_s})
  off, on = out
  for key in ("flops_per_simulation", f"flops_per_simulation_at_{step_tokens}_tokens"):
    on[key.replace("flops_per_simulation", "fewer_flops")] = off[key] / on[key]
  return out


def speed_rows(preset: str, iterations: int = 2, agents: int = 2) -> list[dict]:
  """Simulations per second of one tree at a preset's shapes with random weights (fp32 on a
  CPU, where bf16 matmuls are emulated; the preset's dtype elsewhere)."""
  from jaxdistill.models import init_model
  dtype = jnp.float32 if jax.default_backend() == "cpu" else None
  out = []
  for reuse in (False, True):
    config, lm, width = preset_search(preset, reuse)
    lm = dataclasses.replace(lm, step_end=None, step_end_id=-1, eos_id=-1)  # never ends
    model = init_model(architecture(preset, config), dtype=dtype or jnp.dtype(config.model.dtype),
                       param_dtype=dtype or jnp.dtype(config.model.dtype))
    graphdef, params = nnx.split(model)
    reward = lambda tokens, problem: 0.0
    rng = np.random.RandomState(0)
    prompt_length = width * 3 // 4
    vocab = model.config.vocab_size
    prompts = jnp.asarray(rng.randint(vocab // 10, vocab // 2, (1, width)), jnp.int32)
    lengths = jnp.full((1,), prompt_length, jnp.int32)
    keys = jax.random.split(jax.random.key(0), 1)

    def search(p, prompts, lengths, keys):
      m = nnx.merge(graphdef, p)
      root = lm_expand.root_output(m, lm, prompts, lengths, jnp.zeros((1,), jnp.int32), keys,
                                   reward)
      expand_fn = lm_expand.make_expand_fn(graphdef, p, lm, reward)
      return mcts.search(root, expand_fn, keys, num_iterations=iterations,
                         num_agents=agents).num_expanded

    start = time.perf_counter()
    compiled = jax.jit(search).lower(params, prompts, lengths, keys).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    expanded = int(jax.block_until_ready(compiled(params, prompts, lengths, keys))[0])
    seconds = time.perf_counter() - start
    out.append({"shape": preset, "reuse_kv": reuse, "simulations": iterations * agents,
                "expanded": expanded, "search_s": seconds,
                "sims_per_s": iterations * agents / seconds, "compile_s": compile_s})
    del model, params, compiled
  out[1]["speedup"] = out[1]["sims_per_s"] / out[0]["sims_per_s"]
  return out


def report(shapes, speed_shape: str, step_tokens: int, out_path: str,
           speed_iterations: int = 2, speed_agents: int = 2) -> dict:
  """Print the tables and write the JSON (`results/search_kv_reuse.json` by default)."""
  from jaxdistill.bench.common import print_table, write_json
  rows = [row for preset in shapes for row in shape_rows(preset, step_tokens)]
  at = f"flops_per_simulation_at_{step_tokens}_tokens"
  print(f"KV reuse: forward FLOPs per simulation (counted at L decoded tokens per candidate and "
        f"at {step_tokens}); XLA's count of one expansion (loop body once) per row")
  print_table(rows, ["shape", "reuse_kv", "flops_per_simulation", "fewer_flops", at,
                     f"fewer_flops_at_{step_tokens}_tokens", "counted_one_step",
                     "xla_flops_one_step", "xla_vs_counted", "xla_bytes_one_step",
                     "compile_s"])
  speed = []
  if speed_shape:
    speed = speed_rows(speed_shape, speed_iterations, speed_agents)
    print(f"simulations per second, one tree at {speed_shape} shapes, random weights")
    print_table(speed, ["shape", "reuse_kv", "simulations", "expanded", "search_s",
                        "sims_per_s", "speedup", "compile_s"])
  payload = {"step_tokens": step_tokens, "cost": rows, "speed": speed}
  write_json(out_path, payload)
  return payload
