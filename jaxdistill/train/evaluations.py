"""A run's evaluations during and after training (no search): test, validation and the
learning curve, logged, and the final ones written with each problem's score."""

from __future__ import annotations

import os

from flax import nnx

from jaxdistill import evaluate as evaluation
from jaxdistill import parallel, settings
from jaxdistill.train.metrics import MetricsLog, plot_run
from jaxdistill.models.qwen2 import compute_copy


class Evaluations:
  """A run's evaluations without search: on the test problems (eval_*), the validation
  problems (val_*) and the learning curve's share of them (curve_*), each logged, and the
  final ones written with each problem's score."""

  def __init__(self, config, task, tokenizer, graphdef, test_problems, validation_problems,
               log: MetricsLog, workdir: str):
    self.config, self.task, self.tokenizer, self.graphdef = config, task, tokenizer, graphdef
    self.test = test_problems[:config.eval.num_problems]
    self.validation = list(validation_problems)
    self.log, self.workdir = log, workdir
    self.settings = settings.evaluation(config)
    self.seed = settings.evaluation_seed(config)

  def run(self, step: int, params, problems, prefix: str, final: bool = False) -> dict:
    """final: the last evaluation of a split; its per-problem scores (each problem's mean
    reward, the same numbers `--mode eval` writes) go to WORKDIR/eval_after.json (test) or
    val_after.json (validation), so a comparison needs no second evaluation of the same
    checkpoint, keys and temperature."""
    config = self.config
    policy = nnx.merge(self.graphdef, compute_copy(params, config.model.dtype))
    result = evaluation.evaluate(policy, self.tokenizer, self.task, problems, self.settings,
                                 seed=self.seed, prompt=config.task.prompt,
                                 per_problem=final)
    per_problem = result.pop("per_problem", None)
    self.log.write(step, {f"{prefix}_{k}": v for k, v in result.items()})
    if parallel.is_primary():
      if per_problem is not None:
        split = "validation" if prefix == "val" else "test"
        evaluation.write_result(os.path.join(self.workdir, f"{prefix}_after.json"), result,
                                per_problem=per_problem, step=step, split=split,
                                seed=self.seed, temperature=config.eval.temperature)
      plot_run(self.log.rows(), config.eval.k, os.path.join(self.workdir, "eval.png"))
    return result

  def at_start(self, params) -> dict:
    """Summary entries of the evaluations before training (eval.at_start)."""
    if not (self.config.eval.at_start and self.config.eval.every):  # every=0: none at all
      return {}
    summary = {"eval_before": self.run(0, params, self.test, "eval")}
    if self.validation:  # the validation curve starts where the model starts
      summary["val_before"] = self.run(0, params, self.validation, "val")
    return summary

  def after(self, step: int, params, done: bool) -> dict:
    """Summary entries of the evaluations due after `step` updates: the final ones when
    done, else a learning-curve point every eval.every updates."""
    every = self.config.eval.every
    if not every:
      return {}
    if done:
      summary = {"eval_after": self.run(step, params, self.test, "eval", final=True)}
      if self.validation:
        summary["val_after"] = self.run(step, params, self.validation, "val", final=True)
      return summary
    if step % every:
      return {}
    curve = self.validation[:self.config.eval.curve_problems]
    if curve:
      self.run(step, params, curve, "curve")
      return {}
    return {"eval_after": self.run(step, params, self.test, "eval")}
