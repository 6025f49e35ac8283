"""search.reuse_kv: an expansion that prefills only its step, attending to KV gathered from
the tree, builds the same trees as one that prefills the whole path again (fp32, CPU): the
same visit counts, node tokens and chosen path; node values within 1e-5."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdistill import evaluate, settings
from jaxdistill.configs import countdown as presets
from jaxdistill.rl import rollouts
from jaxdistill.tasks import countdown, rewards
from jaxdistill.warmstart import initial_model


def _search(model, tokenizer, config, reuse: bool, problems):
  config.search.reuse_kv = reuse
  task = countdown.Countdown()
  spec = settings.iteration(config, tokenizer, task.step_delimiter, model.config.vocab_size)
  tokens, lengths = evaluate.encode_prompts(task, tokenizer, problems, config.task.prompt,
                                            config.task.prompt_width)
  reward = rewards.task_reward_fn(task, tokenizer, problems)
  graphdef, params = nnx.split(model)
  keys = jax.random.split(jax.random.key(7), len(problems))
  traj, out = jax.jit(lambda p, t, l, i, k: rollouts.mcts_distill(
      graphdef, p, t, l, i, k, spec.rollout, spec.search, reward))(
          params, tokens, lengths, np.arange(len(problems), dtype=np.int32), keys)
  return jax.device_get(traj), jax.device_get(out)


def _assert_same_trees(config, model, tokenizer, problems):
  off_traj, off = _search(model, tokenizer, config, False, problems)
  on_traj, on = _search(model, tokenizer, config, True, problems)
  a, b = off.tree, on.tree
  np.testing.assert_array_equal(a.visit_count, b.visit_count)
  np.testing.assert_array_equal(a.children, b.children)
  np.testing.assert_array_equal(a.terminal, b.terminal)
  for name in ("path_tokens", "path_length", "candidate_tokens", "candidate_lengths"):
    np.testing.assert_array_equal(getattr(a.embeddings, name), getattr(b.embeddings, name),
                                  err_msg=name)
  np.testing.assert_array_equal(off.path_nodes, on.path_nodes)
  np.testing.assert_allclose(a.raw_value, b.raw_value, atol=1e-5)
  np.testing.assert_allclose(a.node_values(), b.node_values(), atol=1e-5)
  np.testing.assert_allclose(a.prior_logits, b.prior_logits, atol=1e-4)
  np.testing.assert_array_equal(off_traj.tokens, on_traj.tokens)
  assert on.tree.embeddings.step_keys is None  # the pool stays inside the search
  return a


# a preset's shapes and search settings; its budget cut to 2 agents x 3 iterations, so the
# test compiles small programs (bench.search_kv --check compares the presets' full trees)
@pytest.mark.parametrize("preset,option", [("tiny", "dedup_children"),
                                           ("tiny4", "rollout_to_end")])
def test_reuse_builds_the_same_trees_on_the_presets(preset, option, tmp_path):
  config = presets.get_config(preset)
  config.model.dtype = config.model.param_dtype = "float32"
  config.search.num_agents, config.search.num_iterations = 2, 3
  if option == "rollout_to_end":  # candidates cut where their rollouts were most uncertain
    config.search.rollout_to_end, config.search.branch_at = True, "entropy"
    config.search.max_rollout_tokens = 48
  else:
    config.search.dedup_children = True
  model, tokenizer = initial_model.load_model_and_tokenizer(config, str(tmp_path))
  problems = countdown.generate(2, seed=3, count=config.task.numbers)
  tree = _assert_same_trees(config, model, tokenizer, problems)
  assert (tree.depth.max(-1) >= 2).all()  # paths whose KV came from ancestors, not the root


@pytest.mark.optimized  # the 151,936-row vocabulary runs longer than LLVM takes
def test_reuse_builds_the_same_trees_with_the_qwen_tokenizer(qwen_checkpoint):
  """Also: each candidate step holds '</step>' once, at its very end (completed by its last
  token, which may carry a newline), or it ended at EOS or at the step cap; the prompts are
  Qwen's ChatML chat prompts."""
  from jaxdistill.models import from_pretrained
  from jaxdistill import tokenization
  config = presets.get_config("qwen2.5-0.5b")
  config.search.num_agents, config.search.num_iterations = 2, 3
  config.search.max_step_tokens, config.search.max_path_tokens = 16, 208
  config.task.prompt_width = 160  # the chat prompt of a 4-number problem: about 150 tokens
  config.search.temperature = 1.5  # a random model: wander, so that some steps do end
  model = from_pretrained(qwen_checkpoint)  # float32
  tokenizer = tokenization.load_tokenizer(qwen_checkpoint)
  problems = countdown.generate(4, seed=5, count=4)
  tokens, _ = evaluate.encode_prompts(countdown.Countdown(), tokenizer, problems, "chat", 160)
  assert tokenization.decode(tokenizer, tokens[0][:3]).startswith("<|im_start|>system")
  tree = _assert_same_trees(config, model, tokenizer, problems)
  assert (tree.depth.max(-1) >= 2).all()
  emb, step_end, checked = tree.embeddings, tokenization.STEP_END, 0
  for b, node in zip(*np.nonzero(tree.expanded & ~tree.terminal)):
    for k in range(config.search.num_children):
      step = emb.candidate_tokens[b, node, k, :emb.candidate_lengths[b, node, k]].tolist()
      text = tokenization.decode(tokenizer, step)
      if step_end in text:
        assert text.count(step_end) == 1
        assert step_end not in tokenization.decode(tokenizer, step[:-1])  # the last one ends it
      else:
        assert step[-1] == tokenizer.eos_token_id or len(step) == 16
      checked += 1
  assert checked >= 8


def test_searched_path_goes_to_the_learner_as_searched(tmp_path):
  """search.complete_path=False (the reference's choice): the learner's row is the
  most-visited path itself, graded if it ended with EOS, else scored unfinished_reward; no
  completion is sampled."""
  config = presets.get_config("smoke")
  config.search.complete_path, config.search.unfinished_reward = False, -0.5
  model, tokenizer = initial_model.load_model_and_tokenizer(config, str(tmp_path))
  problems = countdown.generate(4, seed=4, count=3)
  traj, out = _search(model, tokenizer, config, True, problems)
  tree, emb = out.tree, out.tree.embeddings
  task = countdown.Countdown(numbers=3)
  searched = ((emb.candidate_lengths.sum(-1)) * (tree.expanded & ~tree.terminal)).sum()
  assert traj.generated_tokens == searched  # nothing beyond the search
  unfinished = 0
  for b in range(len(problems)):
    last = out.path_nodes[b, out.path_length[b] - 1] if out.path_length[b] else 0
    n = emb.path_length[b, last]
    np.testing.assert_array_equal(traj.tokens[b, :n], emb.path_tokens[b, last, :n])
    assert traj.length[b] == n
    generated = traj.tokens[b, traj.prompt_length[b]:n]
    if generated[-1] == tokenizer.eos_token_id:
      from jaxdistill import tokenization
      text = tokenization.decode(tokenizer, generated)
      assert traj.reward[b] == task.reward(text, problems[b], dense=False)
    else:
      assert traj.reward[b] == -0.5
      unfinished += 1
  assert unfinished >= 1  # a random model's 2 x 2 search ends few paths


def test_malformed_answers_get_the_tasks_reward():
  """The reference's grader: no answer -1, an answer that is there but malformed -0.9 (the
  qwen presets), a valid wrong one graded by distance; sparse: 0 for all three."""
  problem = countdown.Problem(numbers=(3, 5, 7, 11), target=26)
  task = countdown.Countdown.from_config(presets.get_config("qwen2.5-0.5b").task)
  malformed = ["<answer>3 + + 5</answer>", "<answer>3 * 9</answer>", "<answer></answer>"]
  for text in malformed:
    assert task.reward(text, problem, dense=True) == -0.9
    assert countdown.Countdown().reward(text, problem, dense=True) == -1.0
  assert task.reward("no answer here", problem, dense=True) == -1.0
  assert task.reward("<answer>3 + 5</answer>", problem, dense=True) == 1 - 2 * 18 / 26
  assert task.reward("<answer>(3 + 5) * 7 - 11 - 19</answer>", problem, dense=True) == -0.9
  for text in malformed + ["no answer here"]:
    assert task.reward(text, problem, dense=False) == 0.0


def test_kv_reuse_bench_at_tiny_size(tmp_path):
  """`python -m jaxdistill.bench.search --kv_reuse` at the tiny preset's shapes: the counted
  FLOPs agree with XLA's count of the compiled expansion, and reuse costs fewer."""
  import json

  from jaxdistill.bench import search_kv
  out = tmp_path / "kv.json"
  search_kv.report(["tiny"], "tiny", 8, str(out), speed_iterations=1, speed_agents=1)
  result = json.loads(out.read_text())
  off, on = result["cost"]
  assert (off["reuse_kv"], on["reuse_kv"]) == (False, True)
  for row in (off, on):  # the model's matmuls and attention are nearly all of XLA's count
    assert 0.97 < row["xla_vs_counted"] < 1.1
  assert on["fewer_flops"] > 1.5 and on["fewer_flops_at_8_tokens"] > on["fewer_flops"]
  assert [row["simulations"] for row in result["speed"]] == [1, 1]
  assert result["machine"]["platform"] == "cpu"


def test_the_kv_pool_costs_its_own_size_in_bf16():
  """The search compiled from shapes in bf16 at a tiny model with many nodes, so the pool
  dominates: reuse on holds about the pool more than reuse off, not an fp32 copy of it too
  (XLA:CPU runs a bf16 gather or scatter on one; stored as its bits it cost 2.9x, now 0.9x)."""
  import jax.numpy as jnp

  from jaxdistill.bench.memory import _peak
  from jaxdistill.methods import get
  from jaxdistill.models import Qwen2Config, init_model
  from jaxdistill.models.qwen2 import compute_copy
  arch = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     tie_word_embeddings=True)
  peaks = {}
  for reuse in (False, True):
    c = presets.get_config("qwen2.5-0.5b")  # bf16 compute
    c.search.reuse_kv, c.task.prompt_width = reuse, 16
    c.search.max_step_tokens, c.search.max_path_tokens = 8, 48
    c.search.num_agents, c.search.num_iterations = 2, 256
    spec = settings.iteration(c)
    model = nnx.eval_shape(lambda: init_model(arch, dtype=jnp.bfloat16,
                                              param_dtype=jnp.float32))
    graphdef, params = nnx.split(model)
    params = jax.eval_shape(lambda p: compute_copy(p, jnp.bfloat16), params)
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 4))
    search = jax.jit(lambda p, t, l, i, k: get("mcts_distill").search_tree(
        graphdef, p, t, l, i, k, spec, lambda *_: 0.0))
    peaks[reuse] = _peak(search.lower(params, i32(4, 16), i32(4), i32(4), keys).compile())[0]
  s = c.search
  pool = (4 * (1 + s.num_agents * s.num_iterations) * s.max_step_tokens
          * 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * 2)
  assert 0.7 * pool < peaks[True] - peaks[False] < 1.3 * pool, (peaks, pool)
