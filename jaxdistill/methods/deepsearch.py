"""deepsearch: DeepSearch's tree search inside RL (`search/frontier.py`): each prompt's tree
harvests `deepsearch.trajectories` terminal paths, each a learner row whose tokens carry
their node's backed-up value minus the tree's mean outcome (Tree-GRPO advantages).

Adaptive training (`deepsearch.round_iterations` > 0), on the host between iterations
(`Rounds`): every round starts by scoring a pool of `filter_pool` training problems with
Pass1@`filter_k` under the current policy and keeps the hard ones (<= `filter_threshold`);
the round's prompts cycle through them. `pool_rounds` rounds in a row score the same pool
(the paper re-filters its whole set every round), then the next `filter_pool` problems. Verified correct completions go to a replay buffer
(`replay`): a buffered problem is not searched again but gets n plain samples of which the
first k = min(cached, n) are replaced by cached solutions (outcome advantages, mean-only).
The filter's samples and the plain samples count as generated tokens, the replayed
solutions do not (`replayed` in the metrics). Buffer and round state are saved in the
checkpoints, so a resume continues exactly.

DeepSearch's learner (PPO with clip-higher 0.2 / 0.28, dual clip 10, token-mean, no KL) is
not forced here: those are learner settings any method may use; the comparison's METHODS
(`experiments.training_runs`) set them for its `deepsearch` entry."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill import sampling
from jaxdistill.methods.base import Method
from jaxdistill.rl.rollouts import Trajectories
from jaxdistill.search import frontier, lm_expand


@dataclasses.dataclass(frozen=True)
class DeepSearchMethodSettings:
  """The method's static settings: the search's and adaptive training's."""

  search: frontier.DeepSearchSettings
  round_iterations: int  # 0: no filter, no replay (every prompt searched)
  filter_k: int
  filter_threshold: float
  filter_pool: int
  pool_rounds: int  # rounds in a row that score the same pool
  replay: bool
  replay_capacity: int  # problems the buffer holds (the oldest make way)


class DeepSearch(Method):
  name = "deepsearch"
  searches = True

  def check(self, config) -> list[str]:
    d = config.deepsearch
    if d.round_iterations and 0 < d.filter_pool < config.train.prompts_per_iteration:
      return [f"config field deepsearch.filter_pool={d.filter_pool}: a round needs at least "
              f"train.prompts_per_iteration={config.train.prompts_per_iteration} problems"]
    return []

  def sampling_temperature(self, config):
    return "search.temperature", config.search.temperature

  def options(self, config) -> DeepSearchMethodSettings:
    d = config.deepsearch
    search = frontier.DeepSearchSettings(
        trajectories=d.trajectories, expansions=d.expansions, max_depth=d.max_depth,
        frontier_q=d.frontier_q, frontier_entropy=d.frontier_entropy,
        frontier_depth=d.frontier_depth, backup_floor=d.backup_floor,
        incomplete_reward=d.incomplete_reward, advantage=d.advantage)
    return DeepSearchMethodSettings(search=search, round_iterations=d.round_iterations,
                             filter_k=d.filter_k, filter_threshold=d.filter_threshold,
                             filter_pool=(d.filter_pool or d.round_iterations
                                          * config.train.prompts_per_iteration),
                             pool_rounds=d.pool_rounds,
                             replay=bool(d.replay and d.round_iterations),
                             replay_capacity=d.replay_capacity)

  def rollout(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
              reward_fn, dense_reward_fn, extras=None):
    del dense_reward_fn
    options, lm = spec.options, spec.search.lm
    tree = self.search_tree(graphdef, params, prompt_tokens, prompt_lengths, problems, keys,
                            spec, reward_fn, extras)
    searched = tree_trajectories(tree, options.search, problems)
    if not options.replay:
      return searched
    replayed = replay_rows(nnx.merge(graphdef, params), lm, options.search, prompt_tokens,
                           prompt_lengths, problems,
                           jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys), extras,
                           reward_fn)
    n = options.search.trajectories
    pick = jnp.repeat(extras["cached_count"] > 0, n)
    choose = lambda a, b: jnp.where(pick.reshape(pick.shape + (1,) * (a.ndim - 1)), a, b)
    # cached solutions were sampled by an older policy: every row's "old" log-probs are the
    # current policy's (assemble computes them), as verl's actor recomputes them
    return Trajectories(
        tokens=choose(replayed.tokens, searched.tokens),
        prompt_length=searched.prompt_length,
        length=choose(replayed.length, searched.length),
        reward=choose(replayed.reward, searched.reward), group=searched.group,
        generated_tokens=searched.generated_tokens + replayed.generated_tokens,
        behaviour_logprobs=None,
        advantages=choose(replayed.advantages, searched.advantages),
        valid=choose(replayed.valid, searched.valid), replayed=pick & replayed.replayed)

  def forward_tokens(self, prompts, prompt_width, spec):
    lm, options = spec.search.lm, spec.options
    search = prompts * options.search.expansions * (lm.max_path_tokens
                                                    + lm.num_children * lm.max_step_tokens)
    plain = (prompts * lm.max_path_tokens * (1 + options.search.trajectories)
             if options.replay else 0)  # the n samples, and the extra scoring forward
    return search + plain

  def kv_slots(self, prompts, prompt_width, spec):
    lm, options = spec.search.lm, spec.options
    expansion = prompts * (lm.max_path_tokens + lm.num_children * lm.max_step_tokens)
    plain = (prompts * (prompt_width + options.search.trajectories
                        * (lm.max_path_tokens - prompt_width)) if options.replay else 0)
    return max(expansion, plain)

  def search_tree(self, graphdef, params, prompt_tokens, prompt_lengths, problems, keys, spec,
                  reward_fn, extras=None):
    cached = None if not spec.options.replay else extras["cached_count"] > 0
    return frontier.search(nnx.merge(graphdef, params), spec.search.lm, spec.options.search,
                             prompt_tokens, prompt_lengths, problems,
                             jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), reward_fn,
                             skip=cached)

  def learner_shape(self, prompts, prompt_width, spec):
    return prompts * spec.options.search.trajectories, spec.search.lm.max_path_tokens

  def brings_advantages(self, spec):
    return True

  def scores_current_policy(self, spec):
    return spec.options.replay

  def probe_iterations(self, config) -> int:
    return max(2, config.deepsearch.round_iterations)  # a whole round: its filter included

  def schedule(self, config, spec, task, tokenizer, train_problems):
    if not spec.options.round_iterations:
      return None
    return Rounds(config, spec, task, tokenizer, train_problems)


def tree_trajectories(tree: frontier.DeepTree, settings: frontier.DeepSearchSettings,
                      problems) -> Trajectories:
  """The harvested paths of B trees as learner rows [B * n] (unused rows invalid, with no
  generated token), advantages target-aligned."""
  leaf, valid, advantages = jax.vmap(frontier.row_advantages, in_axes=(0, None))(tree,
                                                                                    settings)
  rows = jnp.arange(leaf.shape[0])[:, None]
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  prompt_length = tree.path_length[:, frontier.ROOT]
  length = jnp.where(valid, tree.path_length[rows, leaf], prompt_length[:, None])
  n = settings.trajectories
  return Trajectories(
      tokens=flat(tree.path_tokens[rows, leaf]),
      prompt_length=jnp.repeat(prompt_length, n), length=flat(length),
      reward=flat(jnp.where(valid, tree.task_reward[rows, leaf], 0.0)),
      group=jnp.repeat(problems.astype(jnp.int32), n),
      generated_tokens=tree.generated.sum(),
      behaviour_logprobs=flat(tree.path_logprobs[rows, leaf])[:, 1:],
      advantages=flat(advantages)[:, 1:], valid=flat(valid))


def replay_rows(model, lm: lm_expand.LMSearchSettings, settings: frontier.DeepSearchSettings,
                prompt_tokens, prompt_lengths, problems, keys, extras, reward_fn) -> Trajectories:
  """n rows per prompt [B * n] of width P: plain samples (to EOS or the path cap), the first
  k = min(cached, n) replaced by the prompt's cached solutions; per-token advantage the
  row's outcome (+1 correct, -1 wrong, incomplete_reward unfinished) minus the prompt's mean.
  Tokens count only for the samples kept, of prompts that have cached solutions."""
  n, width = settings.trajectories, lm.max_path_tokens
  batch, prompt_width = prompt_tokens.shape
  row_keys = sampling.split_per_row(keys, n)
  out = sampling.sample_continuations(
      model, prompt_tokens, prompt_lengths, row_keys, samples=n,
      max_new_tokens=width - prompt_width, temperature=lm.temperature, top_p=1.0,
      stop_ids=(lm.eos_id,), pad_id=lm.pad_id)
  repeat = lambda x: jnp.repeat(x, n, axis=0)
  lengths = repeat(prompt_lengths).astype(jnp.int32)
  sampled, sampled_length = sampling.concat_completion(repeat(prompt_tokens), lengths,
                                                       out.tokens, out.lengths, lm.pad_id)
  count = jnp.minimum(extras["cached_count"], n)  # [B]
  use_cache = (jnp.arange(n)[None] < count[:, None]).reshape(-1)  # [B * n]
  cache, cache_length = sampling.concat_completion(
      repeat(prompt_tokens), lengths, extras["cached"].reshape(batch * n, -1),
      extras["cached_lengths"].reshape(-1), lm.pad_id)
  tokens = jnp.where(use_cache[:, None], cache[:, :width], sampled[:, :width])
  total = jnp.minimum(jnp.where(use_cache, cache_length, sampled_length), width)
  reward = lm_expand.task_rewards(tokens, lengths, total, repeat(problems), reward_fn)
  ended = use_cache | ((out.lengths > 0)
                       & (out.tokens[jnp.arange(batch * n), jnp.maximum(out.lengths - 1, 0)]
                          == lm.eos_id))
  outcome = jnp.where(reward >= 1.0, 1.0, jnp.where(ended, -1.0, settings.incomplete_reward))
  advantage = (outcome.reshape(batch, n)
               - outcome.reshape(batch, n).mean(-1, keepdims=True)).reshape(-1)
  buffered = repeat(extras["cached_count"] > 0)
  kept = buffered & ~use_cache
  return Trajectories(tokens=tokens, prompt_length=lengths, length=total, reward=reward,
                      group=repeat(problems.astype(jnp.int32)),
                      generated_tokens=(out.lengths * kept).sum(), behaviour_logprobs=None,
                      advantages=jnp.broadcast_to(advantage[:, None], (batch * n, width - 1)),
                      valid=jnp.ones_like(buffered), replayed=use_cache & buffered)


class Rounds:
  """Adaptive training's host state (see the module docstring): the round's hard problems
  and the replay buffer, as fixed-shape arrays (`arrays`, what the checkpoint holds)."""

  def __init__(self, config, spec, task, tokenizer, train_problems):
    from jaxdistill import evaluate
    self.config, self.options, self.task, self.tokenizer = config, spec.options, task, tokenizer
    self.train = train_problems
    self.prompts = config.train.prompts_per_iteration
    lm = spec.search.lm
    self.width = lm.max_path_tokens
    self.filter_settings = evaluate.EvalSettings(
        k=self.options.filter_k, temperature=lm.temperature, top_p=1.0,
        max_new_tokens=lm.max_path_tokens - config.task.prompt_width,
        batch_size=config.eval.batch_size, prompt_width=config.task.prompt_width)
    n, capacity, pool = (self.options.search.trajectories, self.options.replay_capacity,
                         self.options.filter_pool)
    self.state = {
        # scalars as 0-d arrays: what the checkpoint restores
        "hard": np.full(pool, -1, np.int32), "hard_count": np.asarray(0, np.int32),
        "cursor": np.asarray(0, np.int32), "round_end": np.asarray(0, np.int32),
        "pool_position": np.asarray(0, np.int32),
        "buffer_problem": np.full(capacity, -1, np.int32),
        "buffer_tokens": np.zeros((capacity, n, self.width), np.int32),
        "buffer_lengths": np.zeros((capacity, n), np.int32),
        "buffer_count": np.zeros(capacity, np.int32), "buffer_next": np.asarray(0, np.int32)}

  def arrays(self) -> dict:
    return self.state

  def load(self, arrays: dict) -> None:
    self.state = {k: np.array(v) for k, v in arrays.items()}  # writable copies

  def _filter(self, step: int, policy) -> dict:
    """A new round: Pass1@k of a pool of training problems under the current policy; the
    hard ones kept (or, when fewer than a batch are, the batch's worth with the lowest
    scores). A pool is scored by `pool_rounds` rounds in a row (the problems still hard
    come back, so solved ones reach the buffer and return replayed), then the next pool."""
    from jaxdistill import evaluate, streams
    s, pool = self.state, self.options.filter_pool
    revisit = (step // self.options.round_iterations) % self.options.pool_rounds != 0
    start = (int(s["pool_position"]) - (pool if revisit else 0)) % len(self.train)
    ids = [(start + i) % len(self.train) for i in range(pool)]
    key = jax.random.fold_in(streams.key(self.config.seed, "filter"), step)
    result = evaluate.evaluate(policy, self.tokenizer, self.task, [self.train[i] for i in ids],
                               self.filter_settings, prompt=self.config.task.prompt,
                               per_problem=True, stream_key=key)
    scores = np.asarray(result["per_problem"])
    hard = scores <= self.options.filter_threshold
    if hard.sum() < self.prompts:  # too few: the lowest scores, in pool order
      hard = np.zeros(pool, bool)
      hard[np.argsort(scores, kind="stable")[:self.prompts]] = True
    kept = np.asarray(ids, np.int32)[hard]
    s["hard"][:] = -1
    s["hard"][:len(kept)] = kept
    s["hard_count"], s["cursor"] = np.asarray(len(kept), np.int32), np.asarray(0, np.int32)
    s["round_end"] = np.asarray(step + self.options.round_iterations, np.int32)
    s["pool_position"] = np.asarray((start + pool) % len(self.train), np.int32)  # the next
    sampled = self.filter_settings  # each problem's prompt once, then k samples' decode
    forward = pool * (sampled.prompt_width + sampled.k * sampled.max_new_tokens)
    return {"filter_tokens": float(result["generated_tokens"]),
            "filter_forward_tokens": float(forward), "filter_scored": float(pool),
            "filter_kept": float(hard.sum()), "filter_pass": float(scores.mean()),
            "filter_revisit": float(revisit)}

  def before(self, step: int, policy) -> tuple[list[int], dict, dict]:
    """(this iteration's problem ids, the per-prompt replay arrays, metrics of a filter run
    now) -- policy: the current model, used only when a round starts."""
    s = self.state
    metrics = self._filter(step, policy()) if step >= int(s["round_end"]) else {}
    count, cursor = int(s["hard_count"]), int(s["cursor"])
    ids = [int(s["hard"][(cursor + i) % count]) for i in range(self.prompts)]
    s["cursor"] = np.asarray((cursor + self.prompts) % count, np.int32)
    n = self.options.search.trajectories
    cached = np.zeros((self.prompts, n, self.width), np.int32)
    lengths = np.zeros((self.prompts, n), np.int32)
    counts = np.zeros(self.prompts, np.int32)
    if self.options.replay:
      slots = {int(p): i for i, p in enumerate(s["buffer_problem"]) if p >= 0}
      for row, problem in enumerate(ids):
        if problem in slots:
          slot = slots[problem]
          cached[row], lengths[row] = s["buffer_tokens"][slot], s["buffer_lengths"][slot]
          counts[row] = s["buffer_count"][slot]
    extras = {"cached": cached, "cached_lengths": lengths, "cached_count": counts}
    replayed = float((counts > 0).sum())  # prompts answered from the buffer, not searched
    metrics |= {"prompts_replayed": replayed, "prompts_searched": self.prompts - replayed,
                "replayed_share": replayed / self.prompts}
    return ids, extras, metrics

  def after(self, ids: list[int], rows: dict) -> None:
    """Verified correct completions of this iteration's rows (not the replayed ones) into
    the buffer: distinct, at most n per problem, the oldest problem making way."""
    if not self.options.replay:
      return
    s, n = self.state, self.options.search.trajectories
    for row in np.flatnonzero(rows["valid"] & (rows["reward"] >= 1.0) & ~rows["replayed"]):
      problem = ids[row // n]
      start, end = int(rows["prompt_length"][row]), int(rows["length"][row])
      completion = rows["tokens"][row, start:end]
      where = np.flatnonzero(s["buffer_problem"] == problem)
      if where.size:
        slot = int(where[0])
      else:
        slot = int(s["buffer_next"])
        s["buffer_next"] = np.asarray((slot + 1) % len(s["buffer_problem"]), np.int32)
        s["buffer_problem"][slot], s["buffer_count"][slot] = problem, 0
        s["buffer_lengths"][slot] = 0
      count = int(s["buffer_count"][slot])
      known = any(s["buffer_lengths"][slot, j] == len(completion)
                  and np.array_equal(s["buffer_tokens"][slot, j, :len(completion)], completion)
                  for j in range(count))
      if known or count >= n:
        continue
      s["buffer_tokens"][slot, count] = 0
      s["buffer_tokens"][slot, count, :len(completion)] = completion
      s["buffer_lengths"][slot, count] = len(completion)
      s["buffer_count"][slot] = count + 1
