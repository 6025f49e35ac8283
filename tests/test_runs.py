"""A workdir's run is never lost: resumes that would mix two runs refuse and touch nothing,
restarts move the old run aside, unreadable checkpoints are told from mismatched ones, and
only the user's own mistakes become one-line errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train import ROOT, _config, _main

# more iterations, the same programs (TINY fixes the rate's decay): the cache serves them
RUN = ["--config.train.num_iterations=2", "--config.eval.every=0"]
MORE = ["--config.train.num_iterations=3", "--config.eval.every=0"]


def _snapshot(workdir):
  """{relative path: bytes} of the run's metrics and checkpoints."""
  files = {"metrics.jsonl": (workdir / "metrics.jsonl").read_bytes()}
  for root, _, names in os.walk(workdir / "checkpoints"):
    for name in names:
      path = os.path.join(root, name)
      files[os.path.relpath(path, workdir)] = open(path, "rb").read()
  return files


def _steps(workdir):
  return [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]


def test_a_resume_that_would_mix_runs_refuses_and_others_resume(tmp_path):
  _main(tmp_path, *RUN)
  before = _snapshot(tmp_path)
  # a value head with its own rate: another optimizer state; a wider model: other params
  for change in (["--config.learner.value_learning_rate=1e-2"],
                 ["--config.model.hidden_size=64", "--config.model.intermediate_size=128"]):
    result = _main(tmp_path, *MORE, *change, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    field = change[0].split("=")[0][len("--config."):]
    assert "error: " in result.stderr and field in result.stderr
    assert "Traceback" not in result.stderr
    assert _snapshot(tmp_path) == before  # nothing touched
  # a run from before config.json: the checkpoint's own arrays tell, and nothing is written
  (tmp_path / "config.json").rename(tmp_path / "config.saved")
  result = _main(tmp_path, *RUN, "--config.model.hidden_size=64",
                 "--config.model.intermediate_size=128", check=False)
  assert result.returncode == 2 and "holds another state" in result.stderr
  assert "Traceback" not in result.stderr and "but no config.json" in result.stdout
  assert not (tmp_path / "config.json").exists() and _snapshot(tmp_path) == before
  (tmp_path / "config.saved").rename(tmp_path / "config.json")
  # more iterations and another evaluation size shape nothing: resumed, and said so
  result = _main(tmp_path, *MORE, "--config.eval.num_problems=8")
  assert "resumed from checkpoint 2" in result.stdout
  assert "train.num_iterations: 2 -> 3" in result.stdout
  assert "eval.num_problems: 32 -> 8" in result.stdout
  assert _steps(tmp_path) == [1, 2, 3]
  assert (tmp_path / "metrics.jsonl").read_bytes().startswith(before["metrics.jsonl"])
  # restart: the old run moved aside whole, a new one from step 1 (another base model, which
  # a resume refuses; the same programs, so the compilation cache serves them)
  old = (tmp_path / "metrics.jsonl").read_bytes()
  result = _main(tmp_path, *RUN, "--config.train.restart=True", "--config.sft.seed=1")
  aside = [p for p in tmp_path.iterdir() if p.name.startswith("restarted-")]
  assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_bytes() == old
  assert sorted(os.listdir(aside[0] / "checkpoints")) == ["1", "2", "3"]
  assert _steps(tmp_path) == [1, 2] and "moved to" in result.stdout


def _tiny_state(extra=False):
  params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  if extra:
    params["v"] = jnp.zeros(4)
  return {"params": params, "step": jnp.zeros((), jnp.int32)}


def _corrupt(directory):
  for root, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"corrupted")


def test_unreadable_checkpoints_fall_back_and_mismatched_ones_refuse(tmp_path):
  from jaxdistill.train.checkpointing import Checkpointer, NoReadableCheckpoint, StateMismatch
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
  assert checkpointer.restore_latest(_tiny_state()) is None  # nothing saved: a fresh start
  for step in (1, 2):
    checkpointer.save(step, jax.tree.map(lambda x: x + step, _tiny_state()), 10 * step)
  # another structure is the config's doing: refused, not passed over as corrupt
  with pytest.raises(StateMismatch, match="params/v"):
    checkpointer.restore_latest(_tiny_state(extra=True))
  _corrupt(tmp_path / "checkpoints" / "2")
  step, state, position, _ = checkpointer.restore_latest(_tiny_state())
  assert (step, position) == (1, 10) and float(state["params"]["b"][0]) == 2.0
  _corrupt(tmp_path / "checkpoints" / "1")
  with pytest.raises(NoReadableCheckpoint, match="none|no checkpoint"):
    checkpointer.restore_latest(_tiny_state())


def test_an_internal_error_keeps_its_traceback(tmp_path):
  """Only usage errors are one line; a ValueError from inside the program is a bug and is
  shown whole."""
  code = ("import sys; from jaxdistill import main\n"
          "def broken(*a, **k): raise ValueError('internal: shapes do not line up')\n"
          "main.run_job = broken\n"
          f"sys.argv = ['jaxdistill', '--config', 'configs/countdown.py:smoke', "
          f"'--workdir={tmp_path}']\n"
          "main.run()\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
  assert result.returncode == 1
  assert "Traceback" in result.stderr and "internal: shapes do not line up" in result.stderr


def test_non_finite_updates_in_a_row_stop_the_run_resumably(tmp_path):
  from jaxdistill import main, parallel, train
  from jaxdistill.tasks import countdown
  config = _config(train__num_iterations=6, train__checkpoint_every=1,
                   train__max_skipped_updates=2, learner__learning_rate=float("nan"),
                   train__prompts_per_iteration=2)
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  train_split, test_split = countdown.make_splits(0, 200, 16, count=config.task.numbers)
  one = parallel.make_mesh(1)
  summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                        train_split, test_split, str(tmp_path),
                        mesh=one)
  # step 1 skipped and checkpointed; step 2 the second in a row: stop, no checkpoint of it
  assert summary["stopped"]["exit_code"] == 1 and summary["stopped"]["step"] == 1
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
  assert [r["skipped"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))] == [1, 1]
  config.learner.learning_rate = 1e-3  # a rate value shapes nothing: the run resumes
  config.train.num_iterations = 2
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  with open(tmp_path / "metrics.jsonl", "w") as f:  # as if step 1 had taken 1000 s
    f.writelines(json.dumps(r | {"elapsed_s": 1000.0}) + "\n" for r in rows)
  model, _ = main.load_model_and_tokenizer(config, str(tmp_path))
  summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                        train_split, test_split, str(tmp_path),
                        mesh=one)
  assert summary["start_step"] == 1 and summary["end_step"] == 2
  assert summary["last_metrics"]["skipped"] == 0
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and rows[1]["skipped"] == 0
  # the resumed run's clock goes on from its last kept update (the run's training time)
  assert 1000.0 < rows[1]["elapsed_s"] < 1000.0 + 600
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(summary["params"]))


def test_the_evaluation_seed_changes_only_the_evaluations(tmp_path):
  """Training draws from its own random streams: another eval.seed gives other evaluation
  samples and the same training metrics and parameters, update for update."""
  from jaxdistill import main, parallel, train
  from jaxdistill.tasks import countdown
  runs = {}
  for eval_seed in (5, 6):
    config = _config(train__num_iterations=2, eval__every=2, eval__at_start=True,
                     eval__seed=eval_seed, train__prompts_per_iteration=2)
    model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path / "model"))
    train_split, test_split = countdown.make_splits(0, 200, 16, count=config.task.numbers)
    workdir = tmp_path / f"eval{eval_seed}"
    summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                          train_split, test_split, str(workdir), mesh=parallel.make_mesh(1))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    training = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows if "loss" in r]
    evaluations = [r for r in rows if "eval_generated_tokens" in r]
    runs[eval_seed] = training, evaluations, summary["params"]
  assert len(runs[5][0]) == 2 and runs[5][0] == runs[6][0]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(runs[5][2]),
                                                  jax.tree.leaves(runs[6][2])))
  assert len(runs[5][1]) == 2  # before and after, drawn with other samples
  assert [r["eval_generated_tokens"] for r in runs[5][1]] != [
      r["eval_generated_tokens"] for r in runs[6][1]]
