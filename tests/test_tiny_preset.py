"""The tiny preset end to end on a minute-sized budget (the `smoke` preset): warm start,
2 training iterations, evaluation on 32 held-out problems; outputs exist and are sane, the
checkpoint reloads, and a second run reuses the cached warm start and data."""

import json
import math
import subprocess
import sys

from configs import countdown as presets
from test_train import ROOT
import xla_env


def _run(workdir, *extra):
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config", "configs/countdown.py:smoke",
         f"--workdir={workdir}", "--config.train.progress=False", *extra]
  env = xla_env.env(1)
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result.stdout


def test_smoke_preset_end_to_end(tmp_path):
  config = presets.get_config("smoke")
  assert config.eval.num_problems == 32 and config.train.num_iterations == 2
  assert config.sft.steps > 0 and not config.model.path  # a real (short) warm start
  out = _run(tmp_path)
  assert "warm start: " in out and "saved to" in out
  assert "| before |" in out and "| after |" in out and "eval.png" in out
  assert "| before (validation) |" in out and "| after (validation) |" in out
  for name in ("metrics.jsonl", "eval.png", "warm_start/sft_done.json",
               "warm_start/config.json", "warm_start/model.safetensors", "checkpoints/2"):
    assert (tmp_path / name).exists(), name
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train_rows = [r for r in rows if "loss" in r]
  eval_rows = [r for r in rows if "eval_mean@4" in r]
  assert [r["step"] for r in train_rows] == [1, 2]
  assert [r["step"] for r in eval_rows] == [0, 2]
  # the validation curve starts at the model before training, and ends at the trained one
  assert [r["step"] for r in rows if "val_mean@4" in r] == [0, 2]
  for r in train_rows:
    assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and r["skipped"] == 0
    assert -1.0 <= r["reward"] <= 1.0 and r["generated_tokens"] > 0
  for r in eval_rows:
    assert 0.0 <= r["eval_mean@4"] <= r["eval_pass@4"] <= 1.0 and r["eval_problems"] == 32
  sft = json.load(open(tmp_path / "warm_start" / "sft_done.json"))
  assert math.isfinite(sft["final_loss"]) and sft["settings"]["steps"] == config.sft.steps

  # the checkpoint reloads: eval mode scores the trained params, the warm start is reused
  out = _run(tmp_path, "--mode=eval")
  assert "warm start: reusing" in out and "using checkpoint 2" in out
  result = json.load(open(tmp_path / "eval_result.json"))
  assert 0.0 <= result["mean@4"] <= 1.0 and result["problems"] == 32
  # the same params and sampling keys as the final evaluation of the training run
  assert result["mean@4"] == eval_rows[-1]["eval_mean@4"]
  # and each problem's own mean reward, in order, which average to mean@4
  assert len(result["per_problem"]) == 32 and all(x in (0, .25, .5, .75, 1)
                                                  for x in result["per_problem"])
  assert math.isclose(sum(result["per_problem"]) / 32, result["mean@4"], rel_tol=1e-6)
  # the training run's final evaluation kept the same per-problem scores (a comparison reads
  # them instead of evaluating again)
  after = json.load(open(tmp_path / "eval_after.json"))
  assert after["step"] == 2 and after["split"] == "test" and after["mean@4"] == result["mean@4"]
  assert after["per_problem"] == result["per_problem"]
  # and so did its final validation evaluation (a comparison's learning-rate sweep pairs the
  # rates problem by problem on it)
  val_after = json.load(open(tmp_path / "val_after.json"))
  val_row = [r for r in rows if "val_mean@4" in r][-1]
  assert val_after["step"] == 2 and val_after["split"] == "validation"
  assert val_after["mean@4"] == val_row["val_mean@4"]
  assert math.isclose(sum(val_after["per_problem"]) / len(val_after["per_problem"]),
                      val_after["mean@4"], rel_tol=1e-6)
