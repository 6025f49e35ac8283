"""Parameters, gradients and Adam moments split over 8 devices (parallel.fsdp=8): the same
training as every device holding them whole, checkpoints that move between the two layouts,
and an export from a split run."""

import json

import jax
import numpy as np
import pytest

from test_train import _config


def _train(config, workdir, fsdp, **overrides):
  from jaxdistill import main, parallel, train
  from jaxdistill.tasks import countdown
  config = config.copy_and_resolve_references()
  config.parallel.fsdp = fsdp
  for key, value in overrides.items():
    section, field = key.split("__")
    config[section][field] = value
  model, tokenizer = main.load_model_and_tokenizer(config, str(workdir))
  train_split, test_split = countdown.make_splits(0, 200, 16, count=config.task.numbers)
  summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                        train_split, test_split, str(workdir),
                        mesh=parallel.make_mesh(8, fsdp=fsdp))
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return summary, rows


def _split_eighths(tree, whole_shapes):
  """Leaves split over the 8 devices, each device's shard 1/8 of the whole (large ones)."""
  split = 0
  for leaf, shape in zip(jax.tree.leaves(tree), whole_shapes, strict=True):
    if len(shape) < 2:
      continue
    shards = leaf.addressable_shards
    assert len(shards) == 8
    assert all(s.data.size * 8 == int(np.prod(shape)) for s in shards), shape
    split += 1
  return split


@pytest.mark.parametrize("algo,remat", [("mcts_distill", False), ("cispo", True)])
def test_fsdp_trains_the_same_metrics_and_params_as_replicated(tmp_path, algo, remat):
  """2 iterations on 8 devices with parameters split over all 8 give the same metrics and
  parameters as with every device holding them (rtol 1e-5); each device holds 1/8 of every
  matrix and of its Adam moments. With remat the update gathers one layer at a time inside
  the layer loop; without, the whole model before it."""
  from jaxdistill import main, parallel, settings
  from jaxdistill.train.state import initial_state
  config = _config(train__num_iterations=2, train__checkpoint_every=2,
                   learner__learning_rate=1e-4, learner__remat=remat)
  config.algo = algo
  results = {}
  for fsdp in (1, 8):
    summary, rows = _train(config, tmp_path / str(fsdp), fsdp)
    results[fsdp] = (summary, rows)
  for one, eight in zip(results[1][1], results[8][1]):
    assert one["step"] == eight["step"]
    for key in ("reward", "trajectories", "generated_tokens"):
      assert one[key] == eight[key], key
    for key in ("loss", "policy_loss", "value_loss", "kl", "grad_norm"):
      np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, atol=1e-8, err_msg=key)
  params = {n: jax.tree_util.tree_flatten_with_path(results[n][0]["params"])[0] for n in (1, 8)}
  for (path, a), (_, b) in zip(params[1], params[8]):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-9,
                               err_msg=jax.tree_util.keystr(path))
  whole = [x.shape for x in jax.tree.leaves(results[1][0]["params"])]
  assert _split_eighths(results[8][0]["params"], whole) > 10
  # the optimizer state as training holds it (the same layout goes in and comes out)
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path / "8"))
  spec = settings.iteration(config, tokenizer, "\n", model.config.vocab_size)
  _, _, state, _, layout = initial_state(model, spec, 0, parallel.make_mesh(8, fsdp=8))
  adam = state.opt_state[-1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
  for moment in (adam.mu, adam.nu):
    assert _split_eighths(moment, whole) > 10
  assert layout.fsdp is not None


def test_fsdp_checkpoints_restore_across_layouts_and_export(tmp_path):
  """A run split over 8 devices resumes with every device holding the whole state, and that
  run's checkpoint resumes split again; the checkpoint restores into either layout with the
  same values, and `--mode export` writes a directory transformers loads with its weights."""
  import torch
  from transformers import AutoModelForCausalLM

  from jaxdistill import main, parallel, settings
  from jaxdistill.train.state import initial_state
  from jaxdistill.train.checkpointing import Checkpointer
  from test_train import _main
  config = _config(train__num_iterations=2, train__checkpoint_every=1)
  config.algo = "cispo"
  workdir = tmp_path / "run"
  first, _ = _train(config, workdir, 8)
  model, tokenizer = main.load_model_and_tokenizer(config, str(workdir))
  spec = settings.iteration(config, tokenizer, "\n", model.config.vocab_size)
  restored = {}
  for fsdp in (1, 8):
    _, _, state, _, _ = initial_state(model, spec, 0, parallel.make_mesh(8, fsdp=fsdp))
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    step, restored[fsdp], _, _ = checkpointer.restore_latest(state)
    checkpointer.close()
    assert step == 2
  assert restored[1].params["embed_tokens"]["embedding"].sharding.is_fully_replicated
  assert not restored[8].params["embed_tokens"]["embedding"].sharding.is_fully_replicated
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               jax.device_get(restored[1]), jax.device_get(restored[8]))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               jax.device_get(restored[8].params), jax.device_get(first["params"]))
  replicated, _ = _train(config, workdir, 1, train__num_iterations=3)
  assert (replicated["start_step"], replicated["end_step"]) == (2, 3)
  split, rows = _train(config, workdir, 8, train__num_iterations=4)
  assert (split["start_step"], split["end_step"]) == (3, 4)
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  out = tmp_path / "export"  # a process of one device reads the split run's checkpoint
  _main(workdir, "--config.algo=cispo", "--mode=export", f"--out={out}")
  exported = AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32)
  trained = jax.device_get(split["params"])
  np.testing.assert_array_equal(exported.model.embed_tokens.weight.detach().numpy(),
                                np.asarray(trained["embed_tokens"]["embedding"]))
  np.testing.assert_array_equal(
      exported.model.layers[1].mlp.up_proj.weight.detach().numpy(),
      np.asarray(trained["layers"][1]["mlp"]["up_proj"]["kernel"]).T)


def test_memory_planner_splits_state_and_rollout_at_a_tiny_shape():
  """bench.memory's row for a tiny Qwen2 model at the qwen preset's dtypes: the state's
  bytes follow the layout (1/2 per device with fsdp=2), the rollout's KV cache is the largest
  LM call's slots x (keys + values of every layer), and the tree, cache and weights that the
  shapes give fit inside the compiled rollout's temporaries."""
  from jaxdistill.bench.memory import GB, iteration_memory
  from jaxdistill.configs.countdown import get_config
  from jaxdistill.models.qwen2 import Qwen2Config
  arch = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     tie_word_embeddings=True)
  c = get_config("qwen2.5-0.5b")  # bf16 compute, fp32 master weights, remat
  c.train.prompts_per_iteration, c.task.prompt_width = 4, 16
  c.search.max_step_tokens, c.search.max_path_tokens = 8, 48
  c.search.num_agents, c.search.num_iterations = 2, 2
  c.rollout.max_completion_tokens = 32
  row = iteration_memory(c, "mcts_distill", devices=2, fsdp=2, breakdown=True, arch=arch,
                         device_memory_gb=2e-3)
  # a device smaller than the replicated state: refused from the layout, not compiled
  whole = iteration_memory(c, "mcts_distill", devices=2, fsdp=1, arch=arch,
                           device_memory_gb=1e-6)
  assert whole["fits"] is False and "peak_gb" not in whole and "not compiled" in whole["note"]
  for key in ("params_gb", "opt_state_gb", "grads_gb"):  # the matrices split in half
    assert whole[key] / 2 <= row[key] < 0.6 * whole[key], key
  assert row["state_gb"] == pytest.approx(
      row["params_gb"] + row["opt_state_gb"] + row["grads_gb"] + row["ref_gb"])
  assert row["state_gb"] < 2e-3 < row["peak_gb"] and row["fits"] is False
  # 2 prompts per device; the largest call: an expansion of 2 agents' leaves, each a path
  # of 48 slots gathered with room for its step of 8, and K=4 children of 8 step tokens,
  # beside the tree's KV pool (search.reuse_kv): the prompt's 16 slots and 8 per node of
  # 1 + 2 x 2 (the completion call: 2 x (48 + 32))
  s = c.search
  assert s.reuse_kv
  nodes = 1 + s.num_iterations * s.num_agents
  slots = 2 * (s.num_agents * (s.max_path_tokens + s.max_step_tokens
                               + s.num_children * s.max_step_tokens)
               + c.task.prompt_width + nodes * s.max_step_tokens)
  assert slots > 2 * (s.max_path_tokens + c.rollout.max_completion_tokens)
  per_slot = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * 2 + 1
  assert row["kv_cache_gb"] * GB == slots * per_slot + 4  # bf16 keys, values; valid; end
  assert row["tree_gb"] > 0 and row["rollout_weights_gb"] > 0
  assert (row["tree_gb"] + row["kv_cache_gb"] + row["rollout_weights_gb"]
          <= row["rollout_temp_gb"])
  assert row["rollout_other_gb"] == pytest.approx(row["rollout_temp_gb"] - row["tree_gb"]
                                                  - row["kv_cache_gb"]
                                                  - row["rollout_weights_gb"])
