"""The reference presets with a real Qwen2.5 vocabulary: a tiny random Qwen2 checkpoint of
151,936 embedding rows and the real Qwen2.5 tokenizer (built offline), as a user's local
download would be. Each kind of method runs end to end: DeepSearch's tree from the command
line, mcts_distill's in bf16 with its evaluation; cispo and best_of_n are the evaluation's
sampler and the learner every method shares, which both run. Search steps end at '</step>',
which that tokenizer splits into several tokens."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.task.prompt_width=160", "--config.search.num_agents=2",
         "--config.search.num_iterations=2", "--config.search.max_step_tokens=16",
         "--config.search.max_path_tokens=208", "--config.rollout.max_completion_tokens=32",
         "--config.rollout.group_size=2", "--config.rollout.best_of=2",
         "--config.train.prompts_per_iteration=2", "--config.train.num_iterations=2",
         "--config.eval.k=2", "--config.eval.num_problems=4", "--config.eval.max_new_tokens=32",
         "--config.eval.batch_size=8", "--config.eval.every=2", "--config.task.train_size=300",
         "--config.task.test_size=8", "--config.task.validation_size=16",
         "--config.eval.at_start=False", "--config.train.progress=False"]
# both tests keep LLVM's optimisation of the kernels (tests/conftest.py): at 151,936 rows their
# programs run longer than LLVM takes to optimise them
pytestmark = pytest.mark.optimized


@pytest.mark.slow
def test_qwen_preset_runs_deepsearch_from_the_command_line(qwen_checkpoint, tmp_path):
  """(test_train runs every method on 8 devices.)"""
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config", "countdown.py:qwen2.5-0.5b",
         f"--config.model.path={qwen_checkpoint}", f"--workdir={tmp_path}",
         "--config.algo=deepsearch", *SMALL, "--config.deepsearch.trajectories=2",
         "--config.deepsearch.expansions=3", "--config.deepsearch.filter_pool=4",
         "--config.deepsearch.round_iterations=1",
         "--config.method_learner.deepsearch.minibatches=2"]  # 2 prompts x 2 rows
  env = xla_env.env(1)
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train] == [1, 2]
  for row in train:
    assert np.isfinite(row["loss"]) and row["generated_tokens"] > 0
  assert any("eval_mean@2" in r for r in rows) and "| after |" in result.stdout
  assert any("val_mean@2" in r for r in rows)


def test_qwen_preset_in_bf16_moves_its_weights(qwen_checkpoint, tmp_path):
  """The preset as users run it (mcts_distill, bf16 compute, lr 5e-6), then evaluated on its
  test problems: fp32 master weights take Adam's steps, so 3 updates move most policy
  weights and every RMSNorm weight. (Stored in bf16, where the spacing near 0.02 is 1.2e-4
  and near 1.0 is 7.8e-3, a 5e-6 step rounds away: 0.1% of the weights and no norm moved.)"""
  from flax import nnx

  from jaxdistill import main, parallel, settings, train
  from jaxdistill.configs import countdown as presets
  from jaxdistill.tasks import countdown
  config = presets.get_config("qwen2.5-0.5b")
  # without the preset's weight decay: its decoupled step (lr x 0.01 x a norm weight near 1,
  # 5e-8) can cancel three Adam steps to the last ulp, and an element land where it started
  # (seen: 1 of 160 norm weights); what is tested here is the master weights' precision
  presets.apply_overrides(config, [f[len("--config."):] for f in SMALL] + [
      f"model.path={qwen_checkpoint}", "train.num_iterations=3", "train.checkpoint_every=3",
      "eval.every=3", "learner.weight_decay=0.0"])
  assert config.model.dtype == "bfloat16" and config.algo == "mcts_distill"
  assert settings.resolved(config).learner.learning_rate == 5e-6
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  _, start = nnx.split(model)
  start = jax.tree.map(np.asarray, start)  # train donates the state it is given
  train_split, test_split = countdown.make_splits(0, 300, 8, count=config.task.numbers)
  summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                        train_split, test_split, str(tmp_path),
                        mesh=parallel.make_mesh(1))
  assert summary["end_step"] == 3 and summary["last_metrics"]["skipped"] == 0
  after = summary["eval_after"]
  assert after["problems"] == 4 and 0.0 <= after["mean@2"] <= after["pass@2"] <= 1.0
  moved = total = 0
  for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(start),
                              jax.tree.leaves(summary["params"])):
    name = jax.tree_util.keystr(path)
    assert new.dtype == jnp.float32, name  # master weights stay fp32
    changed = np.asarray(new) != old
    if "norm" in name:
      assert changed.all(), name
    if "value_head" not in name:
      moved, total = moved + int(changed.sum()), total + changed.size
  assert moved / total > 0.5, moved / total
