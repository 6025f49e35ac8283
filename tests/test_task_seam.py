"""A second task through the same code: training, evaluation and the search see a task only
through jaxdistill.tasks.base.Task. The toy task (echo a digit) uses its own prompt, verifier
and step delimiter (a newline, not Countdown's '</step>')."""

import dataclasses
import json
import random

import jax
import numpy as np
import pytest

from jaxdistill.tasks.base import Task
from jaxdistill.tasks.format import ASSISTANT, USER


@dataclasses.dataclass(frozen=True)
class Digit:
  value: int

  def key(self):
    return self.value


class Echo(Task):
  """Answer a digit with that digit on a line of its own; records every grade it gives."""

  name = "echo"
  step_delimiter = "\n"

  def __init__(self):
    self.graded = []  # (problem, completion, dense, reward) in grading order

  def splits(self, directory, seed, train_size, validation_size, test_size):
    rng = random.Random(seed)  # ten problems: a toy's splits repeat them
    return tuple([Digit(rng.randrange(10)) for _ in range(size)]
                 for size in (train_size, validation_size, test_size))

  def prompt(self, problem, tokenizer, style):
    return f"{USER}echo {problem.value}\n{ASSISTANT}"

  def reward(self, completion, problem, dense):
    reward = float(completion.split("\n")[0].strip() == str(problem.value))
    self.graded.append((problem, completion, dense, reward))
    return reward

  def demonstration(self, problem):
    return f"{problem.value}\n"


def _config(algo):
  from jaxdistill.configs import countdown as presets
  config = presets.get_config("smoke")
  config.algo = algo
  config.model.hidden_size, config.model.intermediate_size = 32, 64
  config.model.num_hidden_layers = 2
  config.task.prompt_width = 16
  config.search.max_step_tokens, config.search.max_path_tokens = 8, 40
  config.rollout.max_completion_tokens, config.rollout.group_size = 12, 2
  config.train.num_iterations, config.train.checkpoint_every = 2, 2
  config.eval.every = 0  # graded only by training, so each update's reward can be recomputed
  return config


@pytest.mark.parametrize("algo", ["mcts_distill", "cispo"])
def test_a_toy_task_trains_end_to_end(tmp_path, algo):
  """Two iterations on 8 devices: the task's verifier grades every trajectory (its problems
  only), and for cispo each update's reward is the mean of that iteration's grades."""
  from jaxdistill import main, train
  config = _config(algo)
  task = Echo()
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  train_split, _, test_split = task.splits(str(tmp_path), 0, 64, 0, 8)
  summary = train.train(config, task, model, tokenizer, train_split, test_split, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and summary["compiles"] == 1
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert task.graded and all(isinstance(problem, Digit) for problem, *_ in task.graded)
  assert all(dense is config.reward.dense for _, _, dense, _ in task.graded)
  if algo == "cispo":
    per_update = config.train.prompts_per_iteration * config.rollout.group_size
    assert len(task.graded) == 2 * per_update
    for step, row in enumerate(rows):
      grades = [g[3] for g in task.graded[step * per_update:(step + 1) * per_update]]
      assert row["reward"] == pytest.approx(np.mean(grades), abs=1e-6)


def test_the_search_cuts_steps_at_the_tasks_delimiter(tmp_path):
  """Candidate steps at the root end at the first newline (the task's delimiter), at EOS or
  at the step cap; none holds a newline before its end, and some end at one."""
  from jaxdistill import evaluate, main, settings, tokenization
  from jaxdistill.tasks import rewards
  from jaxdistill.search import lm_expand
  config = _config("mcts_distill")
  task = Echo()
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  spec = settings.iteration(config, tokenizer, task.step_delimiter, model.config.vocab_size)
  lm = spec.search.lm
  problems, _, _ = task.splits(str(tmp_path), 1, 8, 0, 1)
  tokens, lengths = evaluate.encode_prompts(task, tokenizer, problems, "compact",
                                            lm.max_path_tokens)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(np.arange(8))
  root = lm_expand.root_output(model, lm, tokens, lengths, np.arange(8, dtype=np.int32), keys,
                               rewards.task_reward_fn(task, tokenizer, problems))
  emb = jax.device_get(root.embedding)
  newline = tokenizer.convert_tokens_to_ids("\n")
  eos = tokenization.special_ids(tokenizer).eos_id
  ended_at_newline = 0
  for row in range(8):
    for k in range(lm.num_children):
      step = emb.candidate_tokens[row, k, :emb.candidate_lengths[row, k]].tolist()
      assert newline not in step[:-1]
      assert step[-1] in (newline, eos) or len(step) == lm.max_step_tokens
      ended_at_newline += step[-1] == newline
  assert ended_at_newline > 0
