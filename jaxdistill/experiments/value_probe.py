r"""Could a value head guide the search at this scale? Fit value predictors offline and see.

    python -m jaxdistill.experiments.value_probe --model runs/compare/warm_start \
        [--run WORKDIR] [--problems 512] [--samples 8] [--out results/value_probe.json]

Samples `--samples` completions of each of `--problems` train problems (rollout temperature;
sparse reward: 1 solved, else 0), runs the model over them and, on half of the problems,
fits predictors of a completion's reward from the model's final hidden state at the states
the learner trains the value head on (the prompt's last token, then every completion token but
the last; at most `--states` per completion, evenly spaced). On the other half of the problems
it reports the explained variance 1 - MSE / MSE of the constant that is the fit half's mean
reward (0: no better than knowing the average solve rate; < 0: worse), for:
- `head`: the model's own value head (`--run`: the run's latest checkpoint; else the
  model's, a fresh head for a warm start);
- `linear`: ridge regression on the hidden state (penalty picked on a quarter of the fit half,
  then refitted on all of it);
- `mlp`: a fresh value head of the model's architecture fitted by Adam on the fit half's hidden
  states with the trunk frozen (steps picked on that quarter);
- `trunk` (`--trunk_steps`): the whole model, trunk and value head, trained by Adam on the
  fit half's value loss alone (the learner's, at `--trunk_lr`; steps picked on that quarter):
  whether the network can learn features that predict success when value is all it learns;
- `problem`: the mean reward of the same problem's other samples, the same at every state: what
  knowing each problem's solve rate alone gives (a state-independent value); beside it,
  `problem_variance_share` (all problems), the share of the reward's variance between
  problems with the sampling noise of those means removed: what knowing each problem's exact
  solve rate would explain.
by position: the prompt (before any completion token), each quarter of the completion, and all
states (each completion weighted equally, as the learner's value loss is). Prints a table and
writes JSON (`--out`).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
from absl import app, flags

BUCKETS = ("prompt", "q1", "q2", "q3", "q4", "all")
RIDGE_PENALTIES = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)


def define_flags():
  """Command-line flags (defined only when run as a program)."""
  flags.DEFINE_string("model", "runs/compare/warm_start", "HF directory of the model")
  flags.DEFINE_string("run", "", "workdir of a training run: probe its latest checkpoint")
  flags.DEFINE_string("preset", "tiny", "config preset (rollout settings, prompt, splits)")
  flags.DEFINE_multi_string("set", [], "config overrides, e.g. --set=rollout.temperature=1.0")
  flags.DEFINE_integer("problems", 512, "train problems to sample")
  flags.DEFINE_integer("samples", 8, "completions per problem")
  flags.DEFINE_integer("states", 16, "at most this many states per completion")
  flags.DEFINE_integer("mlp_steps", 3000, "Adam steps of the fitted value head")
  flags.DEFINE_integer("trunk_steps", 0, "Adam steps of the `trunk` predictor (0: none)")
  flags.DEFINE_float("trunk_lr", 1e-4, "learning rate of the `trunk` predictor")
  flags.DEFINE_integer("seed", 0, "sampling and split seed")
  flags.DEFINE_string("out", "", "JSON output (default: print only)")


FLAGS = flags.FLAGS


@dataclasses.dataclass
class States:
  """One row per probed state, and (for the `trunk` predictor) the completions' tokens."""

  features: np.ndarray  # [N, H] float32 final hidden state
  head: np.ndarray  # [N] the model's value head at that state
  reward: np.ndarray  # [N] reward of the completion the state belongs to
  completion: np.ndarray  # [N] int index of that completion
  problem: np.ndarray  # [N] int index of its problem
  bucket: np.ndarray  # [N] int: 0 prompt, 1-4 quarter of the completion
  position: np.ndarray | None = None  # [N] the state's index in its completion's tokens
  tokens: np.ndarray | None = None  # [C, S] int32 prompt + completion of each completion
  prompt_length: np.ndarray | None = None  # [C]
  length: np.ndarray | None = None  # [C] prompt + completion


def explained_variance(prediction, target, weight, constant: float) -> float:
  """1 - weighted MSE of prediction / weighted MSE of the constant."""
  base = np.sum(weight * (target - constant) ** 2)
  return float(1.0 - np.sum(weight * (target - prediction) ** 2) / base) if base > 0 else 0.0


def completion_weights(completion: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Weights that give each completion's states (among `mask`) a total of 1."""
  counts = np.bincount(completion[mask], minlength=completion.max() + 1)
  weight = np.zeros(len(completion))
  weight[mask] = 1.0 / counts[completion[mask]]
  return weight


def fit_ridge(x, y, weight, penalty: float):
  """(w, b) minimising sum weight (x w + b - y)^2 + penalty |w|^2 (intercept unpenalised)."""
  total = weight.sum()
  mean_x = weight @ x / total
  mean_y = weight @ y / total
  xc = x - mean_x
  gram = (xc * weight[:, None]).T @ xc + penalty * np.eye(x.shape[1])
  w = np.linalg.solve(gram, (xc * weight[:, None]).T @ (y - mean_y))
  return w, float(mean_y - mean_x @ w)


def leave_one_out_means(reward, problem, completion):
  """Per state: the mean reward of the other completions of its problem."""
  first = np.unique(completion, return_index=True)[1]
  row_reward, row_problem = reward[first], problem[first]
  sums = np.bincount(row_problem, weights=row_reward)
  counts = np.bincount(row_problem)
  others = np.maximum(counts[problem] - 1, 1)
  return (sums[problem] - reward) / others


def problem_variance_share(reward, problem) -> float:
  """Per completion rewards and problems -> the share of the reward's variance that lies
  between problems (unbiased: each problem's mean minus its sampling noise), i.e. the
  explained variance of a value that knew each problem's exact solve rate."""
  _, index, counts = np.unique(problem, return_inverse=True, return_counts=True)
  means = np.bincount(index, weights=reward) / counts
  within = means * (1 - means) * counts / np.maximum(counts - 1, 1)  # unbiased per problem
  between = means.var() - np.mean(within / counts)
  total = reward.var()
  return float(between / total) if total > 0 else 0.0


def _fit_with_selection(loss, params, learning_rate: float, batch, select_error, steps: int,
                        every: int):
  """Adam on loss(params, *batch(i)) for `steps` steps; the params of the step (every `every`)
  with the lowest select_error(params)."""
  import jax
  import optax
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(p, s, *args):
    updates, s = optimizer.update(jax.grad(loss)(p, *args), s, p)
    return optax.apply_updates(p, updates), s

  best, best_params = float("inf"), params
  for i in range(1, steps + 1):
    params, opt_state = step(params, opt_state, *batch(i))
    if i % every == 0 or i == steps:
      err = select_error(params)
      if err < best:
        best, best_params = err, params
  return best_params


def fit_mlp(hidden_size, multiplier, x, y, weight, x_select, y_select, w_select, steps: int,
            seed: int):
  """A fresh value head fitted by Adam (lr 1e-3, batches of 4096 states) on x; the params of
  the step (every 100) with the lowest weighted MSE on the select set. Returns predict(x)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from jaxdistill.models.qwen2 import ValueHead
  graphdef, params = nnx.split(ValueHead(hidden_size, multiplier, nnx.Rngs(seed)))

  def loss(p, xb, yb, wb):
    return jnp.sum(wb * (nnx.merge(graphdef, p)(xb) - yb) ** 2) / jnp.sum(wb)

  predict = jax.jit(lambda p, xb: nnx.merge(graphdef, p)(xb))
  rng = np.random.default_rng(seed)
  size = min(4096, len(x))

  def batch(_):
    pick = rng.integers(0, len(x), size)
    return x[pick], y[pick], weight[pick]

  best = _fit_with_selection(
      loss, params, 1e-3, batch,
      lambda p: float(np.sum(w_select * (np.asarray(predict(p, x_select)) - y_select) ** 2)),
      steps, every=100)
  return lambda xs: np.asarray(predict(best, xs))


def fit_trunk(model, states: States, train, select_weight, steps: int, learning_rate: float,
              seed: int, batch: int = 64):
  """The whole model, trunk and value head, trained on the value loss alone (the learner's: per
  completion, the mean of (V - R)^2 over its completion states) on the completions of the
  `train` states by Adam; the params of the step (every 50) with the lowest weighted MSE on the
  states where select_weight > 0. Returns its values at every probed state."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  graphdef, params = nnx.split(model)
  first = np.unique(states.completion, return_index=True)[1]
  reward = states.reward[first].astype(np.float32)  # per completion
  slot = np.arange(states.tokens.shape[1])[None]
  mask = ((slot >= states.prompt_length[:, None] - 1)
          & (slot <= states.length[:, None] - 2)).astype(np.float32)

  def loss(p, tokens, m, r):
    values = nnx.merge(graphdef, p)(tokens).values
    per_row = jnp.sum(m * (values - r[:, None]) ** 2, -1) / jnp.maximum(m.sum(-1), 1.0)
    return per_row.mean()

  forward = jax.jit(lambda p, tokens: nnx.merge(graphdef, p)(tokens).values)

  def values_at(p, wanted):
    """Values at the probed states of the completions in `wanted` (others: 0)."""
    completions = np.unique(states.completion[wanted])
    chunk = 256
    values = np.zeros(states.tokens.shape, np.float32)
    for start in range(0, len(completions), chunk):
      part = completions[start:start + chunk]
      padded = np.concatenate([part, np.full(chunk - len(part), part[0])])
      values[part] = np.asarray(forward(p, states.tokens[padded]))[:len(part)]
    return np.where(wanted, values[states.completion, states.position], 0.0)

  train_rows = np.unique(states.completion[train])
  select = select_weight > 0
  rng = np.random.default_rng(seed)

  def batch_of(_):
    pick = train_rows[rng.integers(0, len(train_rows), batch)]
    return states.tokens[pick], mask[pick], reward[pick]

  best = _fit_with_selection(
      loss, params, learning_rate, batch_of,
      lambda p: float(np.sum(select_weight * (values_at(p, select) - states.reward) ** 2)),
      steps, every=50)
  return values_at(best, np.ones(len(states.reward), bool))


def collect_states(config, task, model, tokenizer, problems, samples: int, max_states: int,
                   seed: int = 0) -> States:
  """Sample `samples` completions per problem and read the states of the module docstring."""
  import jax
  from flax import nnx

  from jaxdistill import evaluate as evaluation
  from jaxdistill.tasks import rewards
  from jaxdistill.rl import rollouts
  from jaxdistill import settings
  config.algo = "cispo"
  spec = settings.iteration(config, tokenizer, task.step_delimiter, model.config.vocab_size)
  rollout = dataclasses.replace(spec.rollout, group_size=samples)
  graphdef, params = nnx.split(model)
  reward_fn = rewards.task_reward_fn(task, tokenizer, problems, dense=False)
  sample = jax.jit(lambda p, t, l, i, k: rollouts.cispo(graphdef, p, t, l, i, k, rollout,
                                                        reward_fn))

  @jax.jit
  def forward(p, tokens):
    out = nnx.merge(graphdef, p)(tokens)
    return out.hidden, out.values

  tokens, lengths = evaluation.encode_prompts(task, tokenizer, problems, config.task.prompt,
                                              config.task.prompt_width)
  batch = max(1, min(len(problems), 256 // samples))
  parts = {k: [] for k in ("features", "head", "reward", "completion", "problem", "bucket",
                           "position", "tokens", "prompt_length", "length")}
  completions = 0
  for start in range(0, len(problems), batch):
    ids = np.arange(start, min(start + batch, len(problems)), dtype=np.int32)
    pad = batch - len(ids)  # the last batch is padded with its first problem (rows dropped)
    ids_padded = np.concatenate([ids, np.full(pad, ids[0], np.int32)])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(ids_padded)
    traj = jax.device_get(sample(params, tokens[ids_padded], lengths[ids_padded], ids_padded,
                                 keys))
    hidden, values = jax.device_get(forward(params, traj.tokens))
    for row in range(len(ids) * samples):
      prompt_length, length = int(traj.prompt_length[row]), int(traj.length[row])
      count = length - prompt_length  # states: prompt_length - 1 .. length - 2
      if count <= 0:
        continue
      chosen = np.unique(np.linspace(0, count - 1, min(max_states, count)).round().astype(int))
      positions = prompt_length - 1 + chosen
      parts["features"].append(hidden[row, positions].astype(np.float32))
      parts["head"].append(values[row, positions].astype(np.float32))
      parts["reward"].append(np.full(len(chosen), float(traj.reward[row] >= 1.0)))
      parts["completion"].append(np.full(len(chosen), completions))
      parts["problem"].append(np.full(len(chosen), int(traj.group[row])))
      parts["bucket"].append(np.where(chosen == 0, 0,
                                      1 + np.minimum(4 * chosen // count, 3)).astype(int))
      parts["position"].append(positions)
      parts["tokens"].append(traj.tokens[row][None])
      parts["prompt_length"].append([prompt_length])
      parts["length"].append([length])
      completions += 1
  return States(**{k: np.concatenate(v) for k, v in parts.items()})


def probe(states: States, hidden_size: int, multiplier: int, mlp_steps: int = 3000,
          seed: int = 0, model=None, trunk_steps: int = 0, trunk_learning_rate: float = 1e-4
          ) -> dict:
  """Explained variance of each predictor by position on the held-out half of the problems
  (with a model and trunk_steps, also `trunk`: see fit_trunk)."""
  rng = np.random.default_rng(seed)
  problems = rng.permutation(np.unique(states.problem))
  half = len(problems) // 2
  held = np.isin(states.problem, problems[half:])
  select = np.isin(states.problem, problems[:half // 4])
  fit, train = ~held, ~held & ~select
  everything = np.ones(len(held), bool)
  weight = completion_weights(states.completion, everything)
  x, y = states.features.astype(np.float64), states.reward
  scale = x[fit].std(0) + 1e-6
  center = x[fit].mean(0)
  z = (x - center) / scale
  constant = float(np.sum(weight[fit] * y[fit]) / np.sum(weight[fit]))

  def select_error(prediction):
    return float(np.sum(weight[select] * (prediction[select] - y[select]) ** 2))

  errors = {}
  for penalty in RIDGE_PENALTIES:
    w, b = fit_ridge(z[train], y[train], weight[train], penalty)
    errors[penalty] = select_error(z @ w + b)
  penalty = min(errors, key=errors.get)
  w, b = fit_ridge(z[fit], y[fit], weight[fit], penalty)
  predictions = {"head": states.head.astype(np.float64), "linear": z @ w + b}
  predict = fit_mlp(hidden_size, multiplier, states.features[train], y[train].astype(np.float32),
                    weight[train].astype(np.float32), states.features[select],
                    y[select].astype(np.float32), weight[select].astype(np.float32),
                    mlp_steps, seed)
  predictions["mlp"] = predict(states.features).astype(np.float64)
  if model is not None and trunk_steps:
    predictions["trunk"] = fit_trunk(model, states, train, np.where(select, weight, 0.0),
                                     trunk_steps, trunk_learning_rate, seed).astype(np.float64)
  predictions["problem"] = leave_one_out_means(states.reward, states.problem, states.completion)
  table = {}
  for name, prediction in predictions.items():
    row = {}
    for index, bucket in enumerate(BUCKETS):
      mask = held & (everything if bucket == "all" else states.bucket == index)
      if mask.any():
        row[bucket] = explained_variance(prediction[mask], y[mask],
                                         completion_weights(states.completion, mask)[mask],
                                         constant)
    table[name] = row
  first = np.unique(states.completion, return_index=True)[1]
  return {"explained_variance": table, "ridge_penalty": penalty,
          "problem_variance_share": problem_variance_share(states.reward[first],
                                                           states.problem[first]),
          "problems": int(len(problems)), "held_out_problems": int(len(problems) - half),
          "completions": int(len(first)), "states": int(len(y)),
          "solve_rate": float(states.reward[first].mean()),
          "problems_with_a_solve": float(np.mean(np.bincount(
              np.unique(states.problem[first], return_inverse=True)[1],
              weights=states.reward[first]) > 0))}


def markdown(result: dict) -> str:
  """The explained-variance table."""
  lines = ["| predictor | " + " | ".join(BUCKETS) + " |", "|---" * (len(BUCKETS) + 1) + "|"]
  for name, row in result["explained_variance"].items():
    lines.append(f"| {name} | " + " | ".join(f"{row[b]:+.3f}" if b in row else "-"
                                              for b in BUCKETS) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  sys.path.insert(0, os.getcwd())
  from jaxdistill.experiments import search_diagnostics
  config, task, model, tokenizer, problems = search_diagnostics.load(
      FLAGS.preset, FLAGS.set, FLAGS.model, FLAGS.problems, FLAGS.run)
  states = collect_states(config, task, model, tokenizer, problems, FLAGS.samples, FLAGS.states,
                          FLAGS.seed)
  result = probe(states, model.config.hidden_size, model.config.value_hidden_multiplier,
                 FLAGS.mlp_steps, FLAGS.seed, model, FLAGS.trunk_steps, FLAGS.trunk_lr)
  result.update(model=FLAGS.model, run=FLAGS.run, samples=FLAGS.samples,
                trunk_steps=FLAGS.trunk_steps, trunk_lr=FLAGS.trunk_lr,
                overrides=FLAGS.set, temperature=config.rollout.temperature)
  print(f"{result['completions']} completions of {result['problems']} train problems "
        f"(solve rate {result['solve_rate']:.3f}; between problems "
        f"{result['problem_variance_share']:.3f} of the reward's variance), explained "
        f"variance of the reward on {result['held_out_problems']} held-out problems:")
  print(markdown(result))
  if FLAGS.out:
    from jaxdistill.files import write_json
    write_json(FLAGS.out, result)


if __name__ == "__main__":
  define_flags()
  app.run(main)
