"""The package's import graph has no cycles, counting imports inside functions too (a
module that imports from a layer above it closes one) and the package `__init__`s an import
runs first."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxdistill")


def _graph():
  modules = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path[:-3], os.path.dirname(ROOT)).replace(os.sep, ".")
        modules[module.removesuffix(".__init__")] = path
  graph = {}
  for module, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxdistill"):
        found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                  else node.module for a in node.names}
      elif isinstance(node, ast.Import):
        found |= {a.name for a in node.names if a.name.startswith("jaxdistill")}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: edges to those packages too
    found |= {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    graph[module] = {m for m in found if m in modules and m != module
                     and not module.startswith(m + ".")}  # a module's own package: no cycle
  return graph


def test_no_import_cycles():
  graph = _graph()
  assert "jaxdistill.train.loop" in graph and "jaxdistill.settings" in graph["jaxdistill.train.loop"]
  state, cycles = {}, []

  def visit(module, path):
    state[module] = "open"
    for other in sorted(graph[module]):
      if state.get(other) == "open":
        cycles.append(path[path.index(other):] + [module, other])
      elif other not in state:
        visit(other, path + [module])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [])
  assert not cycles, cycles


def test_no_module_outside_the_methods_tests_a_method_name():
  """A method is one module (jaxdistill/methods/): no other module compares anything with a
  method's name (if-chains over config.algo), so adding a method touches no other file."""
  from jaxdistill.methods import METHODS
  names = set(METHODS)
  assert {"mcts_distill", "cispo", "best_of_n", "deepsearch"} <= names
  found = []
  for module, path in _graph_paths().items():
    if module.startswith("jaxdistill.methods"):
      continue
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Compare) and any(
          "algo" in ast.unparse(o) or "method" in ast.unparse(o)
          for o in [node.left, *node.comparators]):  # not the policy loss called cispo
        operands = [node.left, *node.comparators]
        constants = {o.value for o in operands if isinstance(o, ast.Constant)}
        for o in operands:  # `x in ("cispo", ...)`
          if isinstance(o, (ast.Tuple, ast.List, ast.Set)):
            constants |= {e.value for e in o.elts if isinstance(e, ast.Constant)}
        if constants & names:
          found.append(f"{module}:{node.lineno}")
  assert not found, found


def test_search_targets_are_tested_by_name_only_in_their_registry():
  """`search.targets` is a key of rollouts.SEARCH_TARGETS: no module compares it with a
  kind's name, so a new kind is one registry entry."""
  from jaxdistill.rl.rollouts import SEARCH_TARGETS
  names = set(SEARCH_TARGETS)
  assert {"path", "tree", "visits"} <= names
  found = []
  for module, path in _graph_paths().items():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Compare) and any(
          "targets" in ast.unparse(o) for o in [node.left, *node.comparators]):
        operands = [node.left, *node.comparators]
        constants = {o.value for o in operands if isinstance(o, ast.Constant)}
        for o in operands:
          if isinstance(o, (ast.Tuple, ast.List, ast.Set)):
            constants |= {e.value for e in o.elts if isinstance(e, ast.Constant)}
        if constants & names:
          found.append(f"{module}:{node.lineno}")
  assert not found, found


def test_a_search_target_joins_by_a_registry_entry(monkeypatch):
  """A kind defined by one SEARCH_TARGETS entry is offered by validation and read by the
  method (its learner shape, its advantages, its temperature, its checks)."""
  from jaxdistill import settings, validation
  from jaxdistill.configs.countdown import apply_overrides, get_config
  from jaxdistill.methods import get
  from jaxdistill.rl import rollouts
  kind = rollouts.SearchTarget(
      trajectories=None, brings_advantages=True, scores_current_policy=True,
      learner_shape=lambda prompts, search, rollout: (prompts * 3, 7),
      check=lambda search: [] if search.num_children > 1 else ["one child is too few"])
  monkeypatch.setitem(rollouts.SEARCH_TARGETS, "first_steps", kind)
  config = apply_overrides(get_config("tiny"), ["search.targets=first_steps"])
  assert validation.problems(config) == []
  spec = settings.iteration(config)
  method = get("mcts_distill")
  assert method.learner_shape(4, 32, spec) == (12, 7)
  assert method.brings_advantages(spec) and method.scores_current_policy(spec)
  assert spec.learner.temperature == 1.0
  assert validation.problems(apply_overrides(config, ["search.num_children=1"])) == [
      "one child is too few"]


def _graph_paths():
  paths = {}
  for directory, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path[:-3], os.path.dirname(ROOT)).replace(os.sep, ".")
        paths[module.removesuffix(".__init__")] = path
  return paths


def test_only_the_task_and_its_config_name_countdown():
  """Countdown is one Task: outside jaxdistill/tasks/ and the configs no module imports it
  or names it (the config file countdown.py, the CLI's default, is a file name)."""
  found = []
  for module, path in _graph_paths().items():
    if module.startswith(("jaxdistill.tasks", "jaxdistill.configs")):
      continue
    source = open(path).read()
    if "Countdown" in source:
      found.append(f"{module}: names Countdown")
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
          "jaxdistill.tasks"):
        names = [f"{node.module}.{a.name}" for a in node.names]
        if any("countdown" in n for n in names):
          found.append(f"{module}:{node.lineno} imports {names}")
  assert not found, found
