"""Evaluation without search: mean@k and pass@k of sampled answers on held-out problems."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from jaxdistill import sampling, streams, tokenization


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """mean@k settings (built by `jaxdistill.settings.evaluation`)."""

  k: int
  temperature: float
  top_p: float
  max_new_tokens: int
  batch_size: int  # rows (problem x sample) per generate call: batch_size // k problems
  prompt_width: int


def encode_prompts(task, tokenizer, problems, prompt: str, width: int):
  """Right-padded prompt tokens [N, width] and lengths for a task's problems (prompt: the
  style, compact or chat)."""
  texts = [task.prompt(p, tokenizer, prompt) for p in problems]
  return tokenization.encode_batch(tokenizer, texts, max_length=width)


def evaluate(model, tokenizer, task, problems, config: EvalSettings, seed: int = 0,
             prompt: str = "compact", progress=None, per_problem: bool = False,
             stream_key=None) -> dict:
  """mean@k (mean sparse reward over k samples each) and pass@k (any of k correct); with
  per_problem, also each problem's mean reward over its k samples ("per_problem", in order),
  from which a comparison can tell problem-sampling noise from seed noise. stream_key: the
  samples' key in place of the seed's evaluation stream (another stream's use of the
  evaluation, as DeepSearch's Pass1@k filter).

  With several processes (multi-host), each evaluates every process_count-th problem on its
  first local device and the per-problem rewards are gathered, so hosts split the work.
  """
  count, index = jax.process_count(), jax.process_index()
  model = _local_model(model)
  mine = list(range(index, len(problems), count))
  base = streams.key(seed, "evaluation") if stream_key is None else stream_key
  rewards, generated = _problem_rewards(model, tokenizer, task, problems, mine, config, base,
                                        prompt, progress)
  if count > 1:
    from jax.experimental import multihost_utils
    width = -(-len(problems) // count)  # equal shapes on every process for the gather
    padded = np.full((width, config.k), np.nan, np.float32)
    padded[:len(mine)] = rewards
    gathered = multihost_utils.process_allgather(padded)  # [count, width, k]
    rewards = np.zeros((len(problems), config.k), np.float32)
    for process in range(count):
      share = list(range(process, len(problems), count))
      rewards[share] = gathered[process][:len(share)]
    generated = int(multihost_utils.process_allgather(np.int64(generated)).sum())
  result = {f"mean@{config.k}": float(rewards.mean()),
            f"pass@{config.k}": float((rewards > 0).any(-1).mean()),
            "problems": len(problems), "generated_tokens": generated}
  if per_problem:
    result["per_problem"] = [float(r) for r in rewards.mean(-1)]
  return result


def _local_model(model):
  """The model with its params on one local device (parallel.local_copy)."""
  from flax import nnx

  from jaxdistill import parallel
  graphdef, params = nnx.split(model)
  return nnx.merge(graphdef, parallel.local_copy(params))


def write_result(path: str, result: dict, **fields) -> None:
  """An evaluation's result (with its per-problem scores, if any) and fields saying what was
  evaluated, as JSON at path, published whole (a killed run leaves no partial file)."""
  from jaxdistill.files import write_json
  write_json(path, result | fields)


def _problem_rewards(model, tokenizer, task, all_problems, indices, config: EvalSettings, base,
                     prompt: str, progress=None):
  """Sparse rewards [len(indices), k] and the number of generated tokens. Sample j of problem
  i is drawn with the key `base` (the evaluation stream's) folded with i and j, whichever
  process evaluates it."""
  if not indices:
    return np.zeros((0, config.k), np.float32), 0
  problems = [all_problems[i] for i in indices]
  ids = tokenization.special_ids(tokenizer)
  tokens, lengths = encode_prompts(task, tokenizer, problems, prompt, config.prompt_width)
  # the k samples of a problem share its prefill; a call takes batch_size // k problems,
  # the last call padded to a full batch so that every call has the same shapes
  per_call = max(1, config.batch_size // config.k)
  pad = (-len(problems)) % per_call
  tokens = np.concatenate([tokens, np.repeat(tokens[:1], pad, 0)])
  lengths = np.concatenate([lengths, np.repeat(lengths[:1], pad, 0)])
  fold = lambda key, i: jax.random.fold_in(key, i)
  keys = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.vmap(
      lambda j: fold(fold(base, i), j))(np.arange(config.k, dtype=np.uint32)))(
          np.asarray(indices, np.uint32))))  # raw key data: padded and sliced below
  keys = np.concatenate([keys, np.repeat(keys[:1], pad, 0)])  # [problems, k, 2]
  rewards = np.zeros((len(problems), config.k), np.float32)
  generated = 0
  for start in range(0, len(problems), per_call):
    stop = start + per_call
    out = jax.device_get(sampling.generate(
        model, tokens[start:stop], lengths[start:stop], None, samples=config.k,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_p=config.top_p, stop_ids=(ids.eos_id,), pad_id=ids.pad_id,
        row_keys=keys[start:stop].reshape(-1, keys.shape[-1])))
    for i in range(start, min(stop, len(problems))):
      p = problems[i]
      for j in range(config.k):
        row = (i - start) * config.k + j
        text = tokenization.decode(tokenizer, out.tokens[row], int(out.lengths[row]))
        rewards[i, j] = task.reward(text, p, dense=False)
        generated += int(out.lengths[row])
    if progress is not None:
      progress(min(stop, len(problems)) * config.k, len(problems) * config.k)
  return rewards, generated


@functools.lru_cache(maxsize=4)
def _search_program(graphdef, search, rollout, task, tokenizer, dense: bool):
  """The jitted test-time search of one model structure and budget, compiled once for every
  set of problems and parameters of the same shapes (a notebook answers before and after
  training)."""
  from jaxdistill.tasks import rewards
  from jaxdistill.rl import rollouts
  current = []  # the problems its reward grades: refilled before each call
  host = rewards.task_reward_fn(task, tokenizer, current, dense=dense, device=False)

  def run(p, t, l, ids, keys, tables):
    # the device reward's problem tables are arguments, so one program serves every call
    reward_fn = host if tables is None else rewards.TaskReward(task, tokenizer, current, dense,
                                                               tables=tables)
    return rollouts.mcts_distill(graphdef, p, t, l, ids, keys, rollout, search, reward_fn)[0]

  return jax.jit(run), current


def searched_answers(model, tokenizer, task, problems, search, rollout, *, prompt_width: int,
                     prompt: str = "compact", seed: int = 0, batch_size: int = 8,
                     dense: bool = True) -> tuple[list[str], int]:
  """Each problem's answer by test-time search (its most-visited path, completed by
  sampling), and the tokens generated. `search` (rollouts.SearchSettings) sets the budget;
  search values use the dense (or sparse) reward."""
  from flax import nnx

  from jaxdistill import parallel
  search = dataclasses.replace(search, targets="path")  # one answer per problem
  graphdef, params = nnx.split(model)
  params = parallel.local_copy(params)  # one placement: one compiled program
  run, current = _search_program(graphdef, search, rollout, task, tokenizer, dense)
  current[:] = problems  # what the compiled program's reward grades
  form = task.device_reward(tokenizer, dense)
  try:
    tables = None if form is None else form.tables(problems)
  except ValueError:  # too large for the device form: graded on the host
    tables = None
  if tables is not None:  # rows padded to a power of two: a few shapes serve every call
    rows = 1 << max(3, (len(problems) - 1).bit_length())
    tables = jax.tree.map(lambda a: np.concatenate(
        [a, np.repeat(a[:1], rows - a.shape[0], axis=0)]), tables)
  tokens, lengths = encode_prompts(task, tokenizer, problems, prompt, prompt_width)
  pad = (-len(problems)) % batch_size
  ids = np.concatenate([np.arange(len(problems)), np.zeros(pad, int)]).astype(np.int32)
  tokens, lengths = tokens[ids], lengths[ids]
  keys = jax.vmap(lambda i: jax.random.fold_in(streams.key(seed, "search"), i))(ids)
  texts, generated = [], 0
  for start in range(0, len(ids), batch_size):
    part = slice(start, start + batch_size)
    traj = jax.device_get(run(params, tokens[part], lengths[part], ids[part], keys[part],
                              tables))
    generated += int(traj.generated_tokens)
    for row in range(min(batch_size, len(problems) - start)):
      completion = traj.tokens[row, traj.prompt_length[row]:traj.length[row]]
      texts.append(tokenization.decode(tokenizer, completion))
  return texts, generated


def evaluate_with_search(model, tokenizer, task, problems, search, rollout, *, prompt_width: int,
                         prompt: str = "compact", seed: int = 0, batch_size: int = 8,
                         dense: bool = True) -> dict:
  """Test-time search: solved share when each problem's answer is its searched trajectory
  (graded with the sparse reward); the budget is iterations x agents simulations each."""
  texts, generated = searched_answers(model, tokenizer, task, problems, search, rollout,
                                      prompt_width=prompt_width, prompt=prompt, seed=seed,
                                      batch_size=batch_size, dense=dense)
  solved = [task.reward(text, p, dense=False)
            for text, p in zip(texts, problems)]
  simulations = search.num_iterations * search.num_agents
  return {"search_solved": float(np.mean(solved)), "problems": len(problems),
          "simulations_per_problem": simulations, "generated_tokens": generated}


def answers(model, tokenizer, task, problems, config: EvalSettings, *, prompt: str = "compact",
            seed: int = 0, search=None, rollout=None) -> list[dict]:
  """One answer per problem, graded: sampled at the evaluation temperature, or, given
  `search` and `rollout` settings, found by test-time search. Rows:
  the task's fields of the problem, answer text, solved."""
  if search is not None:
    texts, _ = searched_answers(model, tokenizer, task, problems, search, rollout,
                                prompt_width=config.prompt_width, prompt=prompt, seed=seed)
  else:
    ids = tokenization.special_ids(tokenizer)
    tokens, lengths = encode_prompts(task, tokenizer, problems, prompt, config.prompt_width)
    out = jax.device_get(sampling.generate(
        _local_model(model), tokens, lengths, streams.key(seed, "evaluation"),
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_p=config.top_p, stop_ids=(ids.eos_id,),
        pad_id=ids.pad_id))
    texts = [tokenization.decode(tokenizer, out.tokens[i], int(out.lengths[i]))
             for i in range(len(problems))]
  return [task.describe(p) | {"answer": text, "solved": task.reward(text, p, dense=False) == 1.0}
          for p, text in zip(problems, texts)]
