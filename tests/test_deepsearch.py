"""DeepSearch's search (jaxdistill.search.frontier): its rules against hand-computed values
on hand-built trees, then the batched search on a tiny random model (invariants, 1 vs 8
devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from settings_for_tests import lm_search_config
import xla_env
from jaxdistill import parallel
from jaxdistill.models import Qwen2Config, init_model
from jaxdistill.search import frontier as ds

SETTINGS = ds.DeepSearchSettings(trajectories=3, expansions=8, max_depth=4, frontier_q=0.4,
                                 frontier_entropy=0.0, frontier_depth=0.01, backup_floor=0.1,
                                 incomplete_reward=-1.0, advantage="tree_grpo")


def _tree(parents, depths, width=12, n=3, **fields):
  """One hand-built tree (no batch axis): parents/depths of its nodes, the rest zero."""
  nodes = len(parents)
  pad = lambda values, fill, dtype: jnp.asarray(list(values) + [fill] * (width - nodes), dtype)
  base = dict(parent=pad(parents, -1, jnp.int32), depth=pad(depths, 0, jnp.int32),
              q=jnp.zeros(width), visits=jnp.zeros(width, jnp.int32),
              terminal=jnp.zeros(width, bool), expanded=jnp.zeros(width, bool),
              outcome=jnp.zeros(width), task_reward=jnp.zeros(width),
              step_nll=jnp.zeros(width), path_nll=jnp.zeros(width),
              path_tokens=jnp.zeros((width, 10), jnp.int32),
              path_logprobs=jnp.zeros((width, 10)), path_length=jnp.zeros(width, jnp.int32),
              num_nodes=jnp.asarray(nodes, jnp.int32), harvested=jnp.full(n, -1, jnp.int32),
              num_harvested=jnp.asarray(0, jnp.int32), dive=jnp.asarray(-1, jnp.int32),
              done=jnp.asarray(False), generated=jnp.asarray(0, jnp.int32))
  for name, values in fields.items():
    base[name] = pad(values, 0, base[name].dtype)
  return ds.DeepTree(**base)


def test_signed_update_never_turns_a_correct_node_negative():
  q = jnp.asarray([0.0, 0.5, -0.3, 0.4, -0.2, 0.0])
  r = jnp.asarray([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
  gamma = jnp.asarray([0.5, 0.5, 0.5, 1.0, 0.5, 0.25])
  np.testing.assert_allclose(ds.signed_update(q, r, gamma),
                             [0.5, 1.0, 0.5, 0.4, -0.7, -0.25], rtol=1e-6)


def test_depth_weights():
  np.testing.assert_allclose(ds.depth_weight(jnp.arange(4), 3, 0.1), [0.25, 0.5, 0.75, 1.0])
  # 1 / 20 is below the floor
  np.testing.assert_allclose(ds.depth_weight(jnp.asarray([0, 9]), 19, 0.1), [0.1, 0.5])


def test_backup_along_a_path_hand_computed():
  # root 0 - a 1 - b 2 - c 3 (a wrong terminal), and d 4 under b (a correct terminal)
  tree = _tree([-1, 0, 1, 2, 2], [0, 1, 2, 3, 3])
  tree = ds.backup(tree, 3, -1.0, SETTINGS)
  np.testing.assert_allclose(tree.q[:5], [-0.25, -0.5, -0.75, -1.0, 0.0])
  np.testing.assert_array_equal(tree.visits[:5], [1, 1, 1, 1, 0])
  tree = ds.backup(tree, 4, 1.0, SETTINGS)  # a correct terminal overwrites the negatives
  np.testing.assert_allclose(tree.q[:5], [0.25, 0.5, 0.75, -1.0, 1.0])
  tree = ds.backup(tree, 3, -1.0, SETTINGS)  # on a correct path: they stay positive
  np.testing.assert_allclose(tree.q[:5], [0.25, 0.5, 0.75, -2.0, 1.0])
  np.testing.assert_array_equal(tree.visits[:5], [3, 3, 3, 2, 1])
  unchanged = ds.backup(tree, -1, 1.0, SETTINGS)
  np.testing.assert_array_equal(unchanged.q, tree.q)


@pytest.mark.parametrize("terminal,correct,complete,nll,expected", [
    ([1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0.1, 0.9, 0.0, 0.05], 1),  # correct first
    ([1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0], [0.1, 0.9, 0.0, 0.05], 0),  # confident wrong
    ([0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0.1, 0.9, 0.0, 0.05], 3),  # only incomplete
    ([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0.1, 0.9, 0.0, 0.05], -1),  # none
    ([1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0.5, 0.0, 0.2, 0.0], 2),  # the surer correct
])
def test_terminal_priority(terminal, correct, complete, nll, expected):
  as_bool = lambda x: jnp.asarray(x, bool)
  assert int(ds.terminal_choice(as_bool(terminal), as_bool(correct), as_bool(complete),
                                jnp.asarray(nll))) == expected


def test_frontier_argmax_hand_computed():
  # root 0 (Q -0.25) with children a 1 (expanded, Q 0.3) and b 2; a's children c 3, d 4
  # (terminal)
  tree = _tree([-1, 0, 0, 1, 1], [0, 1, 1, 2, 2], q=[-0.5, 0.6, 0, 0, 0],
               visits=[2, 2, 1, 1, 0], expanded=[True, True, False, False, False],
               terminal=[False, False, False, False, True])
  scores = ds.frontier_scores(tree, SETTINGS)
  b = 0.4 * np.tanh(-0.25) + 0.01 * np.sqrt(1 / 4)
  c = 0.4 * np.tanh(0.3) + 0.01 * np.sqrt(2 / 4)
  np.testing.assert_allclose(scores[2:4], [b, c], rtol=1e-5)
  assert np.all(np.isneginf(np.asarray(scores)[[0, 1, 4, 5, 6]]))
  node, has = ds._select(tree, SETTINGS)
  assert (int(node), bool(has)) == (3, True)
  dived, _ = ds._select(tree.replace(dive=jnp.asarray(2, jnp.int32)), SETTINGS)
  assert int(dived) == 2


def test_tree_grpo_advantages_hand_computed():
  # prompt of 3 tokens; a 1 (tokens 3-4, q 0.5); under a: b 2 (tokens 5-6, correct) and
  # c 3 (tokens 5-7, incomplete, r -0.5); harvested b then c: baseline (1 - 0.5) / 2
  tree = _tree([-1, 0, 1, 1], [0, 1, 2, 2], q=[0.0, 0.5, 1.0, -0.5],
               terminal=[False, False, True, True], outcome=[0, 0, 1.0, -0.5],
               path_length=[3, 5, 7, 8])
  tree = tree.replace(harvested=jnp.asarray([2, 3, -1], jnp.int32),
                      num_harvested=jnp.asarray(2, jnp.int32))
  leaf, valid, advantages = ds.row_advantages(tree, SETTINGS)
  np.testing.assert_array_equal(leaf[:2], [2, 3])
  np.testing.assert_array_equal(valid, [True, True, False])
  a, base = np.tanh(0.5), 0.25
  np.testing.assert_allclose(advantages, [
      [0, 0, 0, a - base, a - base, 1 - base, 1 - base, 0, 0, 0],
      [0, 0, 0, a - base, a - base, -0.5 - base, -0.5 - base, -0.5 - base, 0, 0],
      [0] * 10], rtol=1e-6, atol=1e-7)


def _rule(name):
  import dataclasses
  return dataclasses.replace(SETTINGS, advantage=name)


def _solved_tree():  # the tree above: a correct b and an incomplete c under a (q 0.5)
  tree = _tree([-1, 0, 1, 1], [0, 1, 2, 2], q=[0.0, 0.5, 1.0, -0.5],
               terminal=[False, False, True, True], outcome=[0, 0, 1.0, -0.5],
               path_length=[3, 5, 7, 8])
  return tree.replace(harvested=jnp.asarray([2, 3, -1], jnp.int32),
                      num_harvested=jnp.asarray(2, jnp.int32))


def _failing_tree():
  # a 1 (tokens 3-4, q -0.6) with two wrong answers under it: b 2 (tokens 5-6) and c 3
  # (tokens 5-7), both r -1; harvested b then c
  tree = _tree([-1, 0, 1, 1], [0, 1, 2, 2], q=[-0.6, -0.6, -1.0, -1.0],
               terminal=[False, False, True, True], outcome=[0, 0, -1.0, -1.0],
               path_length=[3, 5, 7, 8])
  return tree.replace(harvested=jnp.asarray([2, 3, -1], jnp.int32),
                      num_harvested=jnp.asarray(2, jnp.int32))


def test_outcome_and_node_mean_advantages_hand_computed():
  """outcome: each path's r on all its tokens minus the mean r; node_mean: node values
  minus their mean over the harvested tokens (b's path: 2 tokens of a, 2 of b; c's: 2 of
  a, 3 of c)."""
  _, _, outcome = ds.row_advantages(_solved_tree(), _rule("outcome"))
  base = 0.25
  np.testing.assert_allclose(outcome, [
      [0, 0, 0, 1 - base, 1 - base, 1 - base, 1 - base, 0, 0, 0],
      [0, 0, 0, -0.5 - base, -0.5 - base, -0.5 - base, -0.5 - base, -0.5 - base, 0, 0],
      [0] * 10], rtol=1e-6, atol=1e-7)
  _, _, node_mean = ds.row_advantages(_solved_tree(), _rule("node_mean"))
  a = np.tanh(0.5)
  base = (4 * a + 2 * 1.0 + 3 * -0.5) / 9
  np.testing.assert_allclose(node_mean, [
      [0, 0, 0, a - base, a - base, 1 - base, 1 - base, 0, 0, 0],
      [0, 0, 0, a - base, a - base, -0.5 - base, -0.5 - base, -0.5 - base, 0, 0],
      [0] * 10], rtol=1e-6, atol=1e-7)


def test_a_tree_without_a_solution_is_pushed_up_only_by_tree_grpo():
  """The published rule's baseline in a failing tree is -1: every token gets tanh(q) + 1
  (> 0 at a, 0 at the wrong answers); outcome gives 0 everywhere; node_mean keeps a above
  the answers and sums to 0 over the tree's tokens."""
  tree = _failing_tree()
  _, _, grpo = ds.row_advantages(tree, _rule("tree_grpo"))
  a = np.tanh(-0.6)
  np.testing.assert_allclose(grpo[0, 3:7], [a + 1, a + 1, 0, 0], rtol=1e-6, atol=1e-7)
  assert float(grpo.sum()) > 0
  _, _, outcome = ds.row_advantages(tree, _rule("outcome"))
  np.testing.assert_array_equal(outcome, np.zeros((3, 10)))
  _, _, node_mean = ds.row_advantages(tree, _rule("node_mean"))
  base = (4 * a + 5 * -1.0) / 9
  np.testing.assert_allclose(node_mean[1, 3:8], [a - base] * 2 + [-1 - base] * 3, rtol=1e-6)
  assert abs(float(node_mean.sum())) < 1e-5 and float(node_mean[0, 3]) > 0


def test_the_config_offers_every_advantage_rule():
  from jaxdistill import validation
  from jaxdistill.configs import countdown
  config = countdown.get_config("smoke")
  assert validation.problems(config) == []
  for name in ds.ADVANTAGES:
    config.deepsearch.advantage = name
    assert validation.problems(config) == [], name
  config.deepsearch.advantage = "grpo"
  assert any("deepsearch.advantage" in line for line in validation.problems(config))


def test_advantage_stats_on_failing_prompts_hand_computed():
  """Two prompts of two rows each (prompt 2 tokens): prompt 0 has a solved row, prompt 1
  none; the token means over all generated tokens and over prompt 1's alone."""
  from jaxdistill import train
  from jaxdistill.rl.rollouts import Trajectories
  advantages = jnp.asarray([[0, 1.0, 1.0, 0], [0, -1.0, 0, 0],  # 2 and 1 tokens
                            [0, 0.5, 0.5, 0.5], [0, 0.25, 0, 0]])  # 3 and 1 tokens
  traj = Trajectories(tokens=jnp.zeros((4, 5), jnp.int32),
                      prompt_length=jnp.full(4, 2, jnp.int32),
                      length=jnp.asarray([4, 3, 5, 3], jnp.int32),
                      reward=jnp.asarray([1.0, -1.0, -1.0, -0.5]),
                      group=jnp.asarray([0, 0, 1, 1], jnp.int32),
                      generated_tokens=jnp.asarray(7), behaviour_logprobs=None,
                      advantages=advantages)
  stats = train.advantage_stats(traj, jnp.ones(4))
  np.testing.assert_allclose(stats["advantage_mean"], (2 - 1 + 1.5 + 0.25) / 7, rtol=1e-6)
  np.testing.assert_allclose(stats["advantage_mean_failing"], 1.75 / 4, rtol=1e-6)
  np.testing.assert_allclose(stats["failing_token_share"], 4 / 7, rtol=1e-6)


# --- the batched search on a tiny random model ---

VOCAB, EOS, STEP_END, PAD = 24, 1, 2, 0
LM = lm_search_config(num_children=3, max_step_tokens=4, max_path_tokens=22, temperature=1.0,
                      step_end_id=STEP_END, eos_id=EOS, pad_id=PAD)
MODEL = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)


def reward(tokens, problem):
  """Correct when the answer's token sum has the problem's parity (about half the answers)."""
  return float(int(np.sum(tokens)) % 2 == problem % 2)


def _inputs(batch, seed=0):
  rng = np.random.RandomState(seed)
  lengths = rng.randint(2, 7, batch).astype(np.int32)
  tokens = rng.randint(3, VOCAB, (batch, 6)).astype(np.int32)
  tokens[np.arange(6)[None] >= lengths[:, None]] = PAD
  keys = jax.random.key_data(jax.random.split(jax.random.key(1), batch))
  return tokens, lengths, np.arange(batch, dtype=np.int32), keys


def _search(graphdef, params, tokens, lengths, problems, keys):
  return ds.search(nnx.merge(graphdef, params), LM, SETTINGS, tokens, lengths, problems,
                   jax.random.wrap_key_data(keys), reward)


@pytest.fixture(scope="module")
def searched():
  graphdef, params = nnx.split(init_model(MODEL, seed=3))
  inputs = _inputs(8)
  tree = jax.jit(_search, static_argnums=0)(graphdef, params, *inputs)
  return graphdef, params, inputs, jax.device_get(tree)


def test_search_invariants(searched):
  """Every harvested node is a terminal that was backed up once; children extend their
  parent's path; the generated count is the steps' tokens; an ancestor of a correct
  harvested terminal has a positive value; the root's visits count the backups."""
  _, _, (tokens, lengths, _, _), tree = searched
  correct_seen = 0
  for b in range(tokens.shape[0]):
    count = int(tree.num_harvested[b])
    assert 1 <= count <= SETTINGS.trajectories
    leaves = tree.harvested[b, :count]
    assert len(set(leaves.tolist())) == count and np.all(tree.terminal[b, leaves])
    assert tree.visits[b, 0] == 1 + count
    used = int(tree.num_nodes[b])
    assert (used - 1) % LM.num_children == 0
    steps = 0
    for node in range(1, used):
      parent = tree.parent[b, node]
      start, end = tree.path_length[b, parent], tree.path_length[b, node]
      np.testing.assert_array_equal(tree.path_tokens[b, node, :start],
                                    tree.path_tokens[b, parent, :start])
      assert tree.depth[b, node] == tree.depth[b, parent] + 1 <= SETTINGS.max_depth
      steps += end - start
    assert steps == tree.generated[b]
    for leaf in leaves:
      if tree.outcome[b, leaf] == 1.0:
        correct_seen += 1
        node = tree.parent[b, leaf]
        while node >= 0:
          assert tree.q[b, node] > 0
          node = tree.parent[b, node]
    assert tree.done[b]
  assert correct_seen > 0


def test_eight_devices_give_the_one_device_trees(searched):
  graphdef, params, inputs, tree = searched
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  sharded = jax.jit(parallel.shard_map(
      lambda p, *rows: _search(graphdef, p, *rows), mesh,
      in_specs=(P(),) + (P("data"),) * 4, out_specs=P("data")))
  rows = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in inputs]
  other = jax.device_get(sharded(params, *rows))
  for name in ("parent", "q", "visits", "harvested", "num_harvested", "generated",
               "path_tokens"):
    np.testing.assert_allclose(getattr(other, name), getattr(tree, name), rtol=1e-6,
                               err_msg=name)


def test_distinct_solutions_of_a_hand_built_tree():
  """The diagnostic counts each correct completion once per tree, and the harvested ones
  among them: nodes 2 and 3 hold the same correct text, 4 another (not harvested), 5 is
  wrong."""
  from jaxdistill.experiments.search_diagnostics import _deepsearch_solutions
  tokens = np.zeros((1, 6, 8), np.int32)
  tokens[0, :, :2] = 9  # the prompt
  tokens[0, 2, 2:5] = tokens[0, 3, 2:5] = [3, 4, 5]
  tokens[0, 4, 2:4] = [6, 7]
  tokens[0, 5, 2:4] = [8, 8]
  tree = ds.DeepTree(**{**_tree([-1, 0, 1, 1, 1, 1], [0, 1, 2, 2, 2, 2], width=6).__dict__,
                        "path_tokens": tokens[0]})
  batched = jax.tree.map(lambda x: np.asarray(x)[None], tree.replace(
      terminal=jnp.asarray([0, 0, 1, 1, 1, 1], bool),
      outcome=jnp.asarray([0, 0, 1.0, 1.0, 1.0, -1.0]),
      path_length=jnp.asarray([2, 3, 5, 5, 4, 4], jnp.int32),
      harvested=jnp.asarray([2, 3, 5], jnp.int32), num_harvested=jnp.asarray(3, jnp.int32)))
  found, harvested = _deepsearch_solutions(batched, 0)
  assert found == {(3, 4, 5), (6, 7)} and harvested == {(3, 4, 5)}


def test_replay_rows_replace_the_first_samples_and_cost_only_the_rest():
  """Prompt 0 has 2 cached solutions (n = 3): its rows 0 and 1 are the prompt + each
  solution (replayed, no tokens counted), row 2 a sample; prompt 1 has none (its rows are
  computed, not counted: the search answers it). Advantages: outcome minus the prompt's
  mean, on every position."""
  from jaxdistill.methods.deepsearch import replay_rows
  graphdef, params = nnx.split(init_model(MODEL, seed=3))
  tokens, lengths, problems, keys = _inputs(2, seed=4)
  n, width = SETTINGS.trajectories, LM.max_path_tokens
  cached = np.zeros((2, n, width), np.int32)
  cached[0, 0, :3] = [5, 7, EOS]
  cached[0, 1, :4] = [6, 6, 7, EOS]
  extras = {"cached": cached, "cached_lengths": np.asarray([[3, 4, 0], [0, 0, 0]], np.int32),
            "cached_count": np.asarray([2, 0], np.int32)}
  solved = lambda t, p: float(7 in t.tolist())
  rows = jax.device_get(jax.jit(lambda p, t, l, i, k, e: replay_rows(
      nnx.merge(graphdef, p), LM, SETTINGS, t, l, i, jax.random.wrap_key_data(k), e, solved))(
          params, tokens, lengths, problems, keys, extras))
  start = int(lengths[0])
  for row, solution in ((0, [5, 7, EOS]), (1, [6, 6, 7, EOS])):
    assert rows.tokens[row, start:start + len(solution)].tolist() == solution
    assert rows.length[row] == start + len(solution) and rows.reward[row] == 1.0
  np.testing.assert_array_equal(rows.replayed, [True, True, False, False, False, False])
  assert rows.generated_tokens == rows.length[2] - start  # the one kept sample
  completion = lambda r: rows.tokens[r, rows.prompt_length[r]:rows.length[r]].tolist()
  outcome = []
  for r in range(2 * n):
    ended = completion(r)[-1:] == [EOS]
    outcome.append(1.0 if rows.reward[r] >= 1 else (-1.0 if ended else -1.0))
  outcome = np.asarray(outcome).reshape(2, n)
  expected = (outcome - outcome.mean(-1, keepdims=True)).reshape(-1)
  np.testing.assert_allclose(rows.advantages, np.broadcast_to(expected[:, None],
                                                              rows.advantages.shape))


def _rounds(monkeypatch, scores, capacity=2, extra=()):
  from jaxdistill import evaluate, settings
  from jaxdistill.configs import countdown as presets
  from jaxdistill.methods.deepsearch import Rounds
  config = presets.apply_overrides(presets.get_config("smoke"), [
      "algo=deepsearch", "train.prompts_per_iteration=4", "deepsearch.filter_pool=8",
      "deepsearch.trajectories=2", "deepsearch.round_iterations=3",
      f"deepsearch.replay_capacity={capacity}", *extra])
  calls = []

  def fake(policy, tokenizer, task, problems, settings_, **kwargs):
    calls.append(len(problems))
    scored.append([p for p in problems])
    return {"per_problem": list(scores), "generated_tokens": 100}
  monkeypatch.setattr(evaluate, "evaluate", fake)
  scored = []
  rounds = Rounds(config, settings.iteration(config), None, None, list(range(10)))
  rounds.scored = scored  # the problems each filter scored, in order
  return rounds, calls


def test_the_filter_keeps_problems_at_or_below_the_threshold(monkeypatch):
  rounds, calls = _rounds(monkeypatch, [0, 0.5, 0.25, 1, 0, 0.75, 0.25, 0],
                          extra=["deepsearch.pool_rounds=1"])  # a new pool every round
  ids, extras, metrics = rounds.before(0, lambda: None)
  assert ids == [0, 2, 4, 6] and metrics["filter_kept"] == 5 and calls == [8]
  assert metrics["filter_tokens"] == 100
  ids, _, metrics = rounds.before(1, lambda: None)
  assert ids == [7, 0, 2, 4] and "filter_tokens" not in metrics  # the round goes on
  assert metrics["prompts_searched"] == 4 and metrics["replayed_share"] == 0
  rounds.before(2, lambda: None)
  ids, _, metrics = rounds.before(3, lambda: None)  # a new round: the next pool (8, 9, 0..5)
  assert calls == [8, 8] and ids == [8, 0, 2, 4]
  assert not extras["cached_count"].any()


def test_a_pool_comes_back_for_pool_rounds_and_its_solved_problems_are_replayed(monkeypatch):
  """pool_rounds=2: rounds 0 and 1 score the same pool (problems 0-7), round 2 the next
  (8, 9, 0-5); a problem solved in round 0 returns in round 1 with its solution cached."""
  rounds, _ = _rounds(monkeypatch, [0] * 8, extra=["deepsearch.pool_rounds=2"])
  ids, extras, metrics = rounds.before(0, lambda: None)
  assert ids == [0, 1, 2, 3] and metrics["filter_revisit"] == 0.0
  width = rounds.width
  tokens = np.zeros((8, width), np.int32)
  tokens[:, 2:4] = [5, 1]
  rows = {"tokens": tokens, "prompt_length": np.full(8, 2), "length": np.full(8, 4),
          "reward": np.asarray([1, 0, 0, 0, 1, 0, 0, 0.0]), "valid": np.ones(8, bool),
          "replayed": np.zeros(8, bool)}
  rounds.after(ids, rows)  # problems 0 and 2 solved (n = 2 rows per prompt)
  for step in (1, 2):
    rounds.before(step, lambda: None)
  ids, extras, metrics = rounds.before(3, lambda: None)  # round 1: the same pool again
  assert rounds.scored[1] == rounds.scored[0] == list(range(8))
  assert ids == [0, 1, 2, 3] and metrics["filter_revisit"] == 1.0
  np.testing.assert_array_equal(extras["cached_count"], [1, 0, 1, 0])
  assert metrics["prompts_replayed"] == 2 and metrics["replayed_share"] == 0.5
  for step in (4, 5):
    rounds.before(step, lambda: None)
  rounds.before(6, lambda: None)  # round 2: the next pool
  assert rounds.scored[2] == [8, 9, 0, 1, 2, 3, 4, 5]


def test_too_few_hard_problems_take_the_lowest_scores(monkeypatch):
  rounds, _ = _rounds(monkeypatch, [1, 1, 1, 0.5, 1, 0.75, 1, 1])
  ids, _, metrics = rounds.before(0, lambda: None)
  assert ids == [0, 1, 3, 5] and metrics["filter_kept"] == 4


def test_the_buffer_keeps_distinct_verified_solutions_oldest_problem_out(monkeypatch):
  rounds, _ = _rounds(monkeypatch, [0] * 8, capacity=2)
  ids, _, _ = rounds.before(0, lambda: None)  # [0, 1, 2, 3], n = 2 rows each
  width = rounds.width
  tokens = np.zeros((8, width), np.int32)
  tokens[:, 2:4] = [[5, 1], [5, 1], [6, 1], [7, 1], [8, 1], [9, 1], [3, 1], [4, 1]]
  rows = {"tokens": tokens, "prompt_length": np.full(8, 2), "length": np.full(8, 4),
          "reward": np.asarray([1, 1, 1, 0, 1, 1, 1, 1.0]),
          "valid": np.asarray([1, 1, 1, 1, 1, 1, 1, 0], bool),
          "replayed": np.asarray([0, 0, 0, 0, 0, 0, 1, 0], bool)}
  rounds.after(ids, rows)
  s = rounds.state
  # problem 0: [5, 1] once (its two rows agree); 1: [6, 1]; 2 evicts 0 (capacity 2); 3: the
  # replayed row and the invalid one add nothing
  assert sorted(s["buffer_problem"].tolist()) == [1, 2]
  slot = s["buffer_problem"].tolist().index(2)
  assert s["buffer_count"][slot] == 2
  assert s["buffer_tokens"][slot, :2, :2].tolist() == [[8, 1], [9, 1]]
  ids, extras, _ = rounds.before(1, lambda: None)  # [4, 5, 6, 7]: none buffered
  assert not extras["cached_count"].any()
  rounds.state["cursor"] = np.int32(0)
  ids, extras, _ = rounds.before(2, lambda: None)  # [0, 1, 2, 3] again
  np.testing.assert_array_equal(extras["cached_count"], [0, 1, 2, 0])
  assert extras["cached"][2, 1, :2].tolist() == [9, 1]
  assert extras["cached_lengths"][1].tolist() == [2, 0]


def test_the_resume_jobs_reward_grades_the_same_on_the_device(tmp_path):
  """tests/deepsearch_job.py's Lenient reward in its device form equals the host's on random
  completions (of every token, special ones included), so the job's programs carry none."""
  import deepsearch_job
  from jaxdistill import tokenization
  tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "tokenizer"))
  task = deepsearch_job.Lenient(3)
  form = task.device_reward(tokenizer, dense=False)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, len(tokenizer), (64, 12))
  lengths = rng.integers(0, 13, 64)
  tokens[np.arange(12)[None] >= lengths[:, None]] = -1
  host = [task.reward(tokenization.decode(tokenizer, row[row >= 0]), None, False)
          for row in tokens]
  device = jax.jit(form)(form.tables([]), jnp.asarray(tokens, jnp.int32), jnp.zeros(64, jnp.int32))
  np.testing.assert_array_equal(np.asarray(device), host)
  assert 0 < sum(host) < 64


def test_replay_and_rounds_survive_kill_9(tmp_path):
  """A DeepSearch run with rounds and replay (tests/deepsearch_job.py), killed (SIGKILL)
  after its checkpoint 3 and started again, ends with the parameters, the buffer and round
  state, and the metrics rows of a run that was never interrupted; solutions were replayed."""
  import json
  import os
  import signal
  import subprocess
  import sys
  import time
  job = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deepsearch_job.py")
  env = xla_env.env(1)
  run = lambda workdir, **kw: subprocess.Popen([sys.executable, job, str(workdir), "6"],
                                              env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True, **kw)
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  first = run(whole)
  assert first.wait(timeout=600) == 0, first.stdout.read()[-3000:]
  process = run(killed)
  deadline = time.time() + 600
  while not (killed / "checkpoints" / "3").is_dir() and process.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert not (killed / "final.npz").exists(), "the run ended before it was killed"
  again = run(killed)
  output = again.communicate(timeout=600)[0]
  assert again.returncode == 0 and "resumed from checkpoint" in output, output[-3000:]
  a, b = np.load(whole / "final.npz"), np.load(killed / "final.npz")
  assert sorted(a.files) == sorted(b.files) and any(f.startswith("schedule_") for f in a.files)
  for name in a.files:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  rows = lambda d: [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                    for line in open(d / "metrics.jsonl")]
  assert rows(whole) == rows(killed)
  assert sum(r.get("replayed", 0) for r in rows(whole)) > 0
  assert a["schedule_buffer_count"].sum() > 0


def test_the_rounds_table_of_a_run():
  """deepsearch_rounds groups updates into rounds at each filter: per round the replayed
  share of its prompts and the filter's share of its tokens (evaluation rows skipped)."""
  from jaxdistill.experiments.deepsearch_rounds import rounds
  update = lambda step, replayed, tokens, **filt: dict(
      step=step, loss=0.0, generated_tokens=tokens, prompts_replayed=replayed,
      prompts_searched=4 - replayed, **filt)
  rows = [update(1, 0, 150, filter_tokens=50, filter_scored=8, filter_kept=6,
                 filter_pass=0.1, filter_revisit=0.0),
          update(2, 0, 100), {"step": 2, "eval_mean": 0.1},
          update(3, 1, 130, filter_tokens=30, filter_scored=8, filter_kept=5,
                 filter_pass=0.2, filter_revisit=1.0),
          update(4, 3, 40)]
  table = rounds(rows)
  assert [r["iterations"] for r in table] == [2, 2] and table[1]["revisit"]
  assert [r["replayed_share"] for r in table] == [0.0, 0.5]
  np.testing.assert_allclose([r["filter_share"] for r in table], [50 / 250, 30 / 170])
