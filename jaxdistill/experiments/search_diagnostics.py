r"""Why does (or doesn't) search distillation help? Measure what the search hands the learner.

    python -m jaxdistill.experiments.search_diagnostics --model runs/compare/warm_start \
        [--set search.num_iterations=16 ...] [--problems 64]

On train problems, with the preset's search settings (plus overrides), reports:
- `sample_solved`: share of plain samples (rollout temperature) that solve the problem;
- `sample_pass`: share of problems where at least one of the `--samples` plain samples
  solves it (what independent sampling finds: compare with `tree_solved` per token);
- `path_solved`: share of most-visited search paths (what mcts_distill distils) that solve it;
- `tree_solved`: share of problems where some terminal node (or, with rollout_to_end, some
  rollout) of the tree solves it (what the search found, whether or not the most-visited
  path goes there);
- `*_per_1k_tokens`: those shares per 1,000 tokens generated for each problem;
- `distinct_children`: distinct candidate steps per expanded node, out of K;
- `tree_depth` (mean deepest node per tree), `answer_depth_share` (trees with a node at
  the depth where answers end: one step per number, the answer line last) and
  `terminals_per_tree`;
- `sample_pass_at_equal_tokens`: the share of problems that `samples_at_equal_tokens`
  independent samples solve, that many being what the tree's generated tokens buy
  (unbiased pass@m from the `--samples` samples, m at most `--samples`);
- generated tokens per problem for search and for the samples;
- `distinct_solutions_per_1k_tokens` of the mcts_distill tree, DeepSearch's tree
  (`--deepsearch`, with the config's deepsearch section) and the plain samples: distinct
  correct completions (as token sequences, per problem) found per 1,000 tokens generated,
  all problems pooled; for DeepSearch also those among its harvested trajectories (what
  reaches its learner).
Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import tempfile

import numpy as np
from absl import app, flags


def define_flags():
  """Command-line flags (defined only when run as a program: importing this module for
  its functions must not clash with the flags of other absl programs)."""
  flags.DEFINE_string("model", "runs/compare/warm_start", "HF directory of the policy")
  flags.DEFINE_string("preset", "tiny", "config preset for the search settings")
  flags.DEFINE_multi_string("set", [], "config overrides, e.g. --set=search.num_iterations=16")
  flags.DEFINE_integer("problems", 64, "train problems to search")
  flags.DEFINE_integer("samples", 16, "plain samples per problem for sample_solved")
  flags.DEFINE_bool("deepsearch", True, "also search with DeepSearch's tree")
  flags.DEFINE_string("out", "", "JSON output (default: print only)")


FLAGS = flags.FLAGS


def _generated(tokens, start, end) -> tuple:
  return tuple(int(t) for t in tokens[start:end])


def _deepsearch_solutions(tree, row: int) -> tuple[set, set]:
  """(distinct correct completions among all terminals of DeepSearch tree `row`, those
  among its harvested ones)."""
  start = int(tree.path_length[row, 0])
  found, harvested = set(), set()
  chosen = set(tree.harvested[row, :tree.num_harvested[row]].tolist())
  for node in np.nonzero(tree.terminal[row] & (tree.outcome[row] >= 1.0))[0]:
    completion = _generated(tree.path_tokens[row, node], start, tree.path_length[row, node])
    found.add(completion)
    if node in chosen:
      harvested.add(completion)
  return found, harvested


def diagnose(config, task, model, tokenizer, problems, samples: int, seed: int = 0,
             with_deepsearch: bool = False) -> dict:
  """The numbers of the module docstring for `problems` under `config`."""
  import jax
  from flax import nnx

  from jaxdistill import evaluate as evaluation
  config = copy.deepcopy(config)  # the caller's stays as given
  config.algo = "mcts_distill"  # the search diagnosed is mcts_distill's, whatever the method
  programs = _programs(config, task, model, tokenizer, problems, samples, with_deepsearch)
  _, params = nnx.split(model)
  batch = 8
  tokens, lengths = evaluation.encode_prompts(task, tokenizer, problems, config.task.prompt,
                                              config.task.prompt_width)
  totals = {"path_solved": [], "tree_solved": [], "sample_solved": [], "sample_pass": [],
            "distinct": [], "search_tokens": 0, "sample_tokens": 0, "depth": [],
            "answer_depth": [], "terminals": [], "sample_correct": [],
            "solutions": {"mcts_tree": 0, "samples": 0, "deepsearch_tree": 0,
                          "deepsearch_harvested": 0}, "deepsearch_tokens": 0,
            "deepsearch_solved": []}
  for start in range(0, len(problems) - batch + 1, batch):
    part = slice(start, start + batch)
    problem_ids = np.arange(start, start + batch, dtype=np.int32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(problem_ids)
    args = (params, tokens[part], lengths[part], problem_ids, keys)
    _tally_search(totals, *jax.device_get(programs["search"](*args)), config.task.numbers)
    if with_deepsearch:
      _tally_deepsearch(totals, jax.device_get(programs["deepsearch"](*args)))
    _tally_samples(totals, jax.device_get(programs["sample"](*args)), samples)
  return _summary(totals, config, samples)


def _programs(config, task, model, tokenizer, problems, samples: int,
              with_deepsearch: bool) -> dict:
  """The jitted search (mcts_distill's), plain sampling (`samples` per prompt) and, when
  asked, DeepSearch's tree: each (params, tokens, lengths, problem ids, keys) -> its output."""
  import jax
  from flax import nnx

  from jaxdistill import settings
  from jaxdistill.rl import rollouts
  from jaxdistill.tasks import rewards
  spec = settings.iteration(config, tokenizer, task.step_delimiter, model.config.vocab_size)
  graphdef = nnx.graphdef(model)
  sparse = rewards.task_reward_fn(task, tokenizer, problems, dense=False)
  dense = rewards.task_reward_fn(task, tokenizer, problems, dense=config.reward.dense)
  plain_config = dataclasses.replace(spec.rollout, group_size=samples)
  programs = {
      "search": jax.jit(lambda p, t, l, i, k: rollouts.mcts_distill(
          graphdef, p, t, l, i, k, spec.rollout, spec.search, dense)),
      "sample": jax.jit(lambda p, t, l, i, k: rollouts.cispo(
          graphdef, p, t, l, i, k, plain_config, sparse))}
  if with_deepsearch:
    from jaxdistill.methods import deepsearch as deepsearch_method
    from jaxdistill.search import frontier
    options = deepsearch_method.DeepSearch().options(config).search
    programs["deepsearch"] = jax.jit(lambda p, t, l, i, k: frontier.search(
        nnx.merge(graphdef, p), spec.search.lm, options, t, l, i, k, sparse))
  return programs


def _tally_search(totals: dict, traj, out, numbers: int) -> None:
  """One batch of mcts_distill trees: what the path and the tree solved, depth, terminals,
  distinct candidates per expansion and distinct solutions."""
  tree, emb = out.tree, out.tree.embeddings
  batch = tree.parent.shape[0]
  # task rewards were graded during the search (a terminal node's raw value is its
  # reward); dense or sparse, a reward of 1 means solved
  totals["path_solved"].extend((traj.reward >= 1.0).tolist())
  solved_nodes = tree.terminal & (tree.parent >= 0) & (tree.raw_value >= 1.0)
  solved_rollouts = ((emb.rollout_rewards >= 1.0).any(-1) & tree.expanded & ~tree.terminal)
  totals["tree_solved"].extend((solved_nodes | solved_rollouts).any(-1).tolist())
  used = tree.parent >= 0
  totals["depth"].extend(np.where(used, tree.depth, 0).max(-1).tolist())
  totals["answer_depth"].extend((np.where(used, tree.depth, 0) >= numbers).any(-1).tolist())
  totals["terminals"].extend((tree.terminal & used).sum(-1).tolist())
  for row in range(batch):
    for node in np.nonzero(tree.expanded[row] & ~tree.terminal[row])[0]:
      steps = {tuple(emb.candidate_tokens[row, node, k, :emb.candidate_lengths[row, node, k]])
               for k in range(emb.candidate_tokens.shape[2])}
      totals["distinct"].append(len(steps))
  for row in range(batch):
    start = int(emb.prompt_length[row, 0])
    found = set()
    for node in np.nonzero(solved_nodes[row])[0]:
      found.add(_generated(emb.path_tokens[row, node], start, emb.path_length[row, node]))
    for node, k in zip(*np.nonzero(solved_rollouts[row, :, None]
                                  & (emb.rollout_rewards[row] >= 1.0))):
      path = _generated(emb.path_tokens[row, node], start, emb.path_length[row, node])
      found.add(path + _generated(emb.rollout_tokens[row, node, k], 0,
                                  emb.rollout_lengths[row, node, k]))
    totals["solutions"]["mcts_tree"] += len(found)
  totals["search_tokens"] += int(traj.generated_tokens)


def _tally_deepsearch(totals: dict, tree) -> None:
  """One batch of DeepSearch trees: their distinct and harvested solutions and tokens."""
  for row in range(tree.generated.shape[0]):
    found, harvested = _deepsearch_solutions(tree, row)
    totals["solutions"]["deepsearch_tree"] += len(found)
    totals["solutions"]["deepsearch_harvested"] += len(harvested)
    totals["deepsearch_solved"].append(bool(found))
  totals["deepsearch_tokens"] += int(tree.generated.sum())


def _tally_samples(totals: dict, plain, samples: int) -> None:
  """One batch of plain samples: solved share, pass@samples, correct counts, distinct
  solutions and tokens."""
  batch = plain.reward.shape[0] // samples
  rows = plain.tokens.reshape(batch, samples, -1)
  for row in range(batch):
    found = {_generated(rows[row, j], plain.prompt_length[row * samples],
                        plain.length[row * samples + j])
             for j in range(samples) if plain.reward[row * samples + j] >= 1.0}
    totals["solutions"]["samples"] += len(found)
  totals["sample_solved"].extend(plain.reward.tolist())
  totals["sample_pass"].extend((plain.reward.reshape(batch, samples) >= 1.0).any(-1).tolist())
  totals["sample_correct"].extend((plain.reward.reshape(batch, samples) >= 1.0).sum(-1).tolist())
  totals["sample_tokens"] += int(plain.generated_tokens)


def _summary(totals: dict, config, samples: int) -> dict:
  """The reported numbers of the tallies over all batches."""
  n = len(totals["path_solved"])
  per_sample = totals["sample_tokens"] / max(n * samples, 1)
  equal = int(min(samples, max(1, round(totals["search_tokens"] / n / max(per_sample, 1)))))
  return {"problems": n, "tree_depth": float(np.mean(totals["depth"])),
          "answer_depth_share": float(np.mean(totals["answer_depth"])),
          "terminals_per_tree": float(np.mean(totals["terminals"])),
          "samples_at_equal_tokens": equal,
          "sample_pass_at_equal_tokens": float(np.mean(
              [pass_at(samples, c, equal) for c in totals["sample_correct"]])),
          "sample_solved": float(np.mean(totals["sample_solved"])),
          "sample_pass": float(np.mean(totals["sample_pass"])), "samples": samples,
          "path_solved": float(np.mean(totals["path_solved"])),
          "tree_solved": float(np.mean(totals["tree_solved"])),
          "distinct_children": float(np.mean(totals["distinct"])),
          "num_children": config.search.num_children,
          "simulations": config.search.num_iterations * config.search.num_agents,
          "search_tokens_per_problem": totals["search_tokens"] / n,
          "sample_tokens_per_problem": totals["sample_tokens"] / n,
          # problems with a solution found, per 1,000 generated tokens spent on each problem
          "tree_solved_per_1k_tokens": 1000 * float(np.mean(totals["tree_solved"]))
                                       / max(totals["search_tokens"] / n, 1),
          "sample_pass_per_1k_tokens": 1000 * float(np.mean(totals["sample_pass"]))
                                       / max(totals["sample_tokens"] / n, 1),
          "search_temperature": config.search.temperature} | _solution_rates(totals, n)


def pass_at(n: int, correct: int, m: int) -> float:
  """Unbiased chance that m of n samples (correct of them solve) include a solution."""
  if n - correct < m:
    return 1.0
  return 1.0 - float(np.prod(1.0 - m / np.arange(n - correct + 1, n + 1)))


def _solution_rates(totals: dict, n: int) -> dict:
  """Distinct correct completions found, and per 1,000 generated tokens, of each source."""
  tokens = {"mcts_tree": totals["search_tokens"], "samples": totals["sample_tokens"],
            "deepsearch_tree": totals["deepsearch_tokens"],
            "deepsearch_harvested": totals["deepsearch_tokens"]}
  out = {}
  for source, found in totals["solutions"].items():
    if not tokens[source]:
      continue
    out[f"{source}_distinct_solutions"] = found
    out[f"{source}_distinct_solutions_per_1k_tokens"] = 1000 * found / tokens[source]
  if totals["deepsearch_tokens"]:
    out["deepsearch_tokens_per_problem"] = totals["deepsearch_tokens"] / n
    out["deepsearch_solved"] = float(np.mean(totals["deepsearch_solved"]))
  return out


def load(preset: str, overrides: list[str], model_dir: str, problems: int, run: str = ""):
  """(config, task, model, tokenizer, the first `problems` train problems) for an experiment on a
  saved model (run: a training workdir whose latest checkpoint's params to use)."""
  from jaxdistill import tasks, tokenization
  from jaxdistill.train import checkpointing
  from jaxdistill.configs import countdown as presets
  from jaxdistill.models import from_pretrained
  config = presets.apply_overrides(presets.get_config(preset), overrides)
  model = from_pretrained(model_dir)
  if run:
    model = checkpointing.latest_model(model, run)
  tokenizer = tokenization.load_tokenizer(model_dir)
  task = tasks.from_config(config)
  with tempfile.TemporaryDirectory() as directory:  # the run's splits, regenerated
    train, _, _ = task.splits(directory, config.task.data_seed, config.task.train_size,
                              config.task.validation_size, config.task.test_size)
  return config, task, model, tokenizer, train[:problems]


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  config, task, model, tokenizer, problems = load(FLAGS.preset, FLAGS.set, FLAGS.model,
                                            FLAGS.problems)
  result = diagnose(config, task, model, tokenizer, problems, FLAGS.samples,
                    with_deepsearch=FLAGS.deepsearch)
  result["overrides"] = FLAGS.set
  print(" | ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in result.items()))
  if FLAGS.out:
    from jaxdistill.files import write_json
    write_json(FLAGS.out, result)


if __name__ == "__main__":
  define_flags()
  app.run(main)
