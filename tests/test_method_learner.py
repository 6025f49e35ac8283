"""A method carries its learner: learner fields left None take the method's values
(`method_learner`), a value given for the learner wins, and validation checks both."""

import pytest

from jaxdistill import settings, validation
from jaxdistill.configs.countdown import apply_overrides, get_config


def _learner(preset="tiny4", *overrides):
  return settings.learner(apply_overrides(get_config(preset), list(overrides)))


def test_deepsearch_alone_trains_with_its_published_learner():
  ds = _learner("tiny4", "algo=deepsearch")
  assert (ds.policy_loss, ds.ppo_eps, ds.ppo_eps_high, ds.dual_clip) == ("ppo", 0.2, 0.28, 10.0)
  assert (ds.loss_aggregation, ds.kl_coef, ds.value_coef) == ("token", 0.0, 0.0)
  assert (ds.weight_decay, ds.clip_norm, ds.minibatches) == (0.1, 1.0, 8)
  # the tiny model's rate: the ds_tree_grpo row's validation pick (docs/results.md)
  assert ds.learning_rate == 1e-5
  # the schedule counts optimizer steps: 8 per iteration
  assert ds.decay_steps == 8 * get_config("tiny4").train.num_iterations
  other = _learner("tiny4", "algo=cispo")
  assert (other.policy_loss, other.minibatches, other.value_coef) == ("cispo", 1, 1.0)
  assert (other.weight_decay, other.clip_norm, other.kl_coef) == (0.0, 0.1, 0.05)


def test_a_learner_value_given_wins_and_a_method_value_can_be_set():
  ds = _learner("tiny4", "algo=deepsearch", "learner.minibatches=2",
                "method_learner.deepsearch.weight_decay=0.2")
  assert (ds.minibatches, ds.weight_decay, ds.policy_loss) == (2, 0.2, "ppo")
  assert _learner("tiny4", "algo=cispo", "learner.minibatches=2").minibatches == 2


def test_the_qwen_presets_scale_each_methods_rate():
  assert _learner("qwen2.5-1.5b", "algo=deepsearch").learning_rate == 1e-6
  cispo = _learner("qwen2.5-1.5b", "algo=cispo")
  assert (cispo.learning_rate, cispo.weight_decay) == (5e-6, 0.01)


def test_resolution_is_idempotent_and_leaves_the_given_config_alone():
  config = apply_overrides(get_config("tiny"), ["algo=deepsearch"])
  once = settings.resolved(config)
  assert config.learner.minibatches is None and once.learner.minibatches == 8
  assert settings.resolved(once) is once


@pytest.mark.parametrize("override, message", [
    ("method_learner.deepsearch.minibatches=0",
     "config field method_learner.deepsearch.minibatches=0: must be an integer >= 1"),
    ("learner.minibatches=0", "config field learner.minibatches=0: must be an integer >= 1"),
])
def test_validation_checks_the_value_where_it_was_set(override, message):
  found = validation.problems(apply_overrides(get_config("tiny"),
                                              ["algo=deepsearch", override]))
  assert found == [message]


def test_validation_names_a_method_learner_entry_for_no_method():
  config = get_config("tiny")
  config.method_learner.unknown = dict(minibatches=2)
  assert validation.problems(config) == [
      "config field method_learner.unknown.minibatches: method_learner holds 'default' and "
      "methods (mcts_distill, cispo, best_of_n, deepsearch), not 'unknown'"]


def test_minibatches_must_divide_each_devices_rows():
  config = apply_overrides(get_config("smoke"), ["algo=deepsearch",
                                                 "train.prompts_per_iteration=4"])
  assert validation.device_problems(config, 2) == []  # 2 prompts x 8 trajectories
  config = apply_overrides(config, ["deepsearch.trajectories=3"])
  assert validation.device_problems(config, 2) == [
      "config field learner.minibatches=8 (deepsearch's where not given, from "
      "method_learner): must divide the 6 learner rows each of the 2 devices gets"]
