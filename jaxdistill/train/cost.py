"""What an iteration computes, for comparisons at equal budget and for achieved FLOP/s: the
positions the LM runs on (static shapes, padding included) and their forward FLOPs, in total
and per phase."""

from __future__ import annotations

from jaxdistill import methods, settings
from jaxdistill.models.qwen2 import forward_flops_per_token
from jaxdistill.rl.batch import ADVANTAGES


def assemble_forwards(spec: settings.IterationSettings) -> int:
  """Forward passes `assemble_batch` runs over the learner batch: the reference policy's
  (KL), the current policy's (visit rows carry no behaviour log-probs) and the value
  head's (value-baseline advantages; tree targets bring their own)."""
  method = methods.get(spec.method)
  value_baseline = (ADVANTAGES[spec.advantage].needs_values
                    and not method.brings_advantages(spec))
  return (int(spec.learner.kl_coef > 0) + int(method.scores_current_policy(spec))
          + int(value_baseline))


def phase_flops(spec: settings.IterationSettings, prompts: int, prompt_width: int,
                flops_per_token: float) -> dict:
  """Forward-equivalent FLOPs of each phase for one iteration (static shapes, padding
  included): rollout = the positions the LM runs on; assemble = the forwards it runs
  (`assemble_forwards`); update = forward + backward (3 forwards) per gradient step."""
  method = methods.get(spec.method)
  rows, width = method.learner_shape(prompts, prompt_width, spec)
  positions = rows * (width - 1)
  return {"rollout": method.forward_tokens(prompts, prompt_width, spec) * flops_per_token,
          "assemble": assemble_forwards(spec) * positions * flops_per_token,
          "update": 3 * spec.learner.epochs * positions * flops_per_token}


def iteration_cost(config, spec: settings.IterationSettings, model) -> dict:
  """Compute per iteration, for comparisons at equal budget: positions the LM runs on
  (static shapes, padding included) and forward FLOPs (at a mid-length context); with
  train.phase_timing, each phase's FLOPs too."""
  prompts, width = config.train.prompts_per_iteration, config.task.prompt_width
  forward_tokens = methods.get(spec.method).forward_tokens(prompts, width, spec)
  context = width + spec.rollout.max_completion_tokens // 2
  flops_per_token = forward_flops_per_token(model.config, context)
  phases = (phase_flops(spec, prompts, width, flops_per_token)
            if config.train.phase_timing else {})
  return {"forward_tokens": forward_tokens, "flops_per_token": flops_per_token,
          "phases": phases}


def timing_metrics(metrics: dict, phases: dict) -> dict:
  """Achieved FLOP/s of each timed phase and the rollout's sampled tokens per second."""
  extra = {f"phase_flop_per_s/{phase}": flop / metrics[f"phase_s/{phase}"]
           for phase, flop in phases.items()}
  if phases:
    extra["rollout_tokens_per_s"] = metrics["generated_tokens"] / metrics["phase_s/rollout"]
  return extra
