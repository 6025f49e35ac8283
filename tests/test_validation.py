"""The whole config is checked before any work: every field out of range (or an unknown
choice) gives one line naming it, at once."""

import os
import subprocess
import sys
import time

import pytest
from absl import app

from jaxdistill import validation
from jaxdistill.configs import countdown as presets
from jaxdistill.configs import rules as rule_types
from jaxdistill.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outside(rule):
  """A value just outside what the rule allows (None: the rule has no such value)."""
  if isinstance(rule, rule_types.Int):
    return rule.low - 1
  if isinstance(rule, rule_types.Float):
    return rule.low if rule.open_low else rule.low - 1.0
  if isinstance(rule, rule_types.Choice):
    return "no-such-option"
  return None


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_every_field_has_a_rule_and_the_presets_pass(preset):
  config = presets.get_config(preset)
  assert validation.problems(config) == []
  assert set(validation.fields(config)) == set(validation._schema())


def test_each_field_out_of_range_is_one_line_naming_it():
  rules = validation._schema()
  checked = 0
  for name, rule in rules.items():
    for bad in (_outside(rule), rule.high + 1 if getattr(rule, "high", None) is not None
                else None):
      if bad is None:
        continue
      config = presets.get_config("smoke")
      section, _, field = name.rpartition(".")
      target = config[section] if section else config
      with target.ignore_type():
        target[field] = bad
      found = validation.problems(config)
      assert len(found) == 1 and found[0].startswith(f"config field {name}="), (name, found)
      assert "\n" not in found[0]
      checked += 1
  assert checked >= 70  # every numeric and choice field, some at both ends


def test_cross_field_rules():
  config = presets.get_config("smoke")
  config.search.max_path_tokens = config.task.prompt_width + config.search.max_step_tokens - 1
  assert "search.max_path_tokens" in validation.problems(config)[0]
  config = presets.get_config("smoke")
  config.algo, config.rollout.group_size = "cispo", 1
  assert "rollout.group_size" in validation.problems(config)[0]
  config = presets.get_config("smoke")
  config.search.branch_at = "entropy"  # needs rollouts to cut
  assert "search.branch_at='entropy': needs search.rollout_to_end" in (
      validation.problems(config)[0])
  config.search.rollout_to_end = True
  assert validation.problems(config) == []
  config.search.targets, config.search.tree_rows = "visits", 10  # K = 4 rows per node
  assert "search.tree_rows=10: visits targets take search.num_children=4" in (
      validation.problems(config)[0])
  assert "train.prompts_per_iteration=6: must be a multiple of the 4 devices" in (
      validation.device_problems(_with(prompts=6), 4)[0])
  assert validation.device_problems(_with(prompts=8), 4) == []


def _with(prompts):
  config = presets.get_config("smoke")
  config.train.prompts_per_iteration = prompts
  return config


@pytest.mark.parametrize("override,field", [
    ("train.num_iterations=-1", "train.num_iterations"),
    ("learner.learning_rate=-1", "learner.learning_rate"),
    ("eval.k=0", "eval.k"), ("search.num_children=0", "search.num_children"),
    ("algo=foo", "algo"), ("search.num_agents=0", "search.num_agents"),
])
def test_the_cli_refuses_at_once_before_any_work(tmp_path, override, field):
  """With no cached warm start, a typo is reported in seconds, not after minutes of work."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "jaxdistill.main", "--config",
                           "countdown.py:tiny", f"--workdir={tmp_path / 'w'}",
                           f"--config.{override}"], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: config field {field}="), lines
  assert not (tmp_path / "w").exists()  # no workdir, warm start, data or compile
  assert time.perf_counter() - start < 30


@pytest.mark.parametrize("given", ["countdown.py:huge", "configs/countdown.py:huge"])
def test_an_unknown_preset_is_named_with_the_presets_in_both_forms(given):
  """The bare name and the path of the config file: one line that names the presets (the
  path form used to end at ml_collections' "Error whilst parsing config file:")."""
  result = subprocess.run([sys.executable, "-m", "jaxdistill.main", "--config", given],
                          cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "'huge'" in lines[0] and "tiny, smoke, tiny4" in lines[0], lines


def test_processes_probing_one_workdir_at_once_do_not_collide(tmp_path, monkeypatch):
  """Every host of a multi-host job checks at once that the shared workdir is writable:
  another process's probe, written and removed while ours exists, must not break ours."""
  from jaxdistill import main
  real_remove = os.remove
  others = []

  def remove(path):
    if not others:  # the other host probes (and cleans up) between our write and our remove
      others.append(path)
      main.check_writable(str(tmp_path))
    real_remove(path)

  monkeypatch.setattr(os, "remove", remove)
  main.check_writable(str(tmp_path))
  assert len(others) == 1 and os.listdir(tmp_path) == []


def test_overrides_as_the_scripts_take_them_reach_any_depth_and_keep_the_field_s_type():
  config = presets.apply_overrides(presets.get_config("tiny"), [
      "seed=3", "eval.temperature=0.8", "search.rollout_to_end=false", "learner.decay_steps=7"])
  assert config.seed == 3 and config.eval.temperature == 0.8
  assert config.search.rollout_to_end is False and config.learner.decay_steps == 7
  assert isinstance(config.eval.temperature, float)
  # every bad override is one usage error, for the command line and for absl's scripts alike
  for item, message in (
      ("eval.temprature=0.5", r"unknown config field eval.temprature \(did you mean temperature\?\)"),
      ("evl.temperature=0.5", r"unknown config field evl \(did you mean eval\?\)"),
      ("eval.temperature.x=1", "unknown config field eval.temperature.x"),
      ("eval.temperature", "field=value"),
      ("search.rollout_to_end=yes please", "true or false"),  # not read as False
      ("search.num_agents=4.5", "search.num_agents takes int values")):
    with pytest.raises(presets.OverrideError, match=message) as raised:
      presets.apply_overrides(config, [item])
    assert isinstance(raised.value, UsageError) and isinstance(raised.value, app.UsageError)
  assert config.eval.temperature == 0.8 and config.search.num_agents == presets.get_config(
      "tiny").search.num_agents  # nothing half-applied
  assert presets.apply_overrides(config, ["search.rollout_to_end=1"]).search.rollout_to_end


@pytest.mark.parametrize("preset", ["tiny", "tiny4", "medium"])
def test_the_locally_built_presets_shapes_hold_every_problem_of_their_size(preset, tmp_path):
  """Prompts, step lines, warm-start examples and whole answers of the preset's task.numbers
  fit its static shapes (a cut warm-start example teaches answers that never end; a too short
  completion budget scores solvable problems 0). Not `smoke`: a test-speed preset whose
  10-step warm start solves nothing, with budgets cut for speed (48 tokens, answers <= 50)."""
  from jaxdistill import tokenization
  from jaxdistill.tasks import countdown
  config = presets.get_config(preset)
  tokenizer = tokenization.build_char_tokenizer(str(tmp_path / "tok"))
  encode = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
  problems = countdown.generate(3000, seed=11, count=config.task.numbers)
  solutions = [countdown.solution_steps(p.numbers, p.target) for p in problems]
  prompt = max(encode(countdown.compact_prompt(p.numbers, p.target)) for p in problems)
  answer = max(encode(s) + 1 for s in solutions)  # + EOS
  step = max(encode(line + "\n") for s in solutions for line in s.split("\n"))
  assert prompt <= config.task.prompt_width
  assert prompt + answer <= config.sft.sequence_length + 1
  assert answer <= min(config.rollout.max_completion_tokens, config.eval.max_new_tokens)
  assert step <= config.search.max_step_tokens
  assert config.task.prompt_width + answer <= config.search.max_path_tokens


def test_a_layers_settings_are_read_by_name_never_copied_by_hand():
  """settings._from fills a layer's dataclass from the config section's fields of the same
  names (what the section lacks must be given): a field the config lacks, or a given name
  the layer lacks, is an error, not a silent default."""
  import dataclasses

  import ml_collections

  from jaxdistill import settings

  @dataclasses.dataclass(frozen=True)
  class Layer:
    width: int
    depth: int
    pad_id: int = 0

  section = ml_collections.ConfigDict({"width": 3, "depth": 2, "unrelated": 1.0})
  assert settings._from(section, Layer) == Layer(3, 2, 0)
  assert settings._from(section, Layer, depth=5, pad_id=7) == Layer(3, 5, 7)
  with pytest.raises(KeyError, match="Layer.depth"):
    settings._from(ml_collections.ConfigDict({"width": 3}), Layer)
  with pytest.raises(KeyError, match="height"):
    settings._from(section, Layer, height=1)


def test_every_field_is_declared_once_and_every_read_is_of_a_declared_field():
  """A setting is declared in one place (`configs/countdown.py`: default and rule): declaring
  a field twice is an error, and every `config.section.field` the package reads is declared
  (a read of an undeclared field would fail only when its line runs)."""
  import ast

  from jaxdistill.configs.rules import COUNT, Declared
  section = Declared()
  section.steps = 1, COUNT
  with pytest.raises(ValueError, match="'steps' is declared twice"):
    section.steps = 2, COUNT
  with pytest.raises(TypeError, match="default, rule"):
    section.width = 3  # a default without its rule
  declared = set(validation._schema())
  sections = {name.split(".")[0] for name in declared if "." in name}
  methods = set(dir(presets.get_config()))  # ConfigDict's own: items(), get_type(), ...
  undeclared, reads = [], 0
  package = os.path.join(ROOT, "jaxdistill")
  for directory, _, files in os.walk(package):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(directory, name)
      for node in ast.walk(ast.parse(open(path).read())):
        # config.section.field, c.section.field, self.config.section.field
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
          continue
        root = node.value.value
        if not ((isinstance(root, ast.Name) and root.id in ("config", "c", "cfg")) or
                (isinstance(root, ast.Attribute) and root.attr == "config")):
          continue
        section, field = node.value.attr, node.attr
        if section not in sections or field in methods:
          continue
        reads += 1
        read = f"{section}.{field}"
        if read not in declared and not any(d.startswith(read + ".") for d in declared):
          undeclared.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {section}.{field}")
  assert reads > 200 and not undeclared, undeclared
