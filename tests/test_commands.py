"""Every `python -m jaxdistill.bench.*` and `jaxdistill.experiments.*` command starts: it
imports and parses its flags (a flag defined twice, or a module that no longer imports,
fails here), and the search benchmark's LM mode runs at a tiny size."""

import os
import re
import subprocess
import sys

import pytest

import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "jaxdistill")


def _commands() -> list[str]:
  found = []
  for folder in ("bench", "experiments"):
    for name in sorted(os.listdir(os.path.join(PACKAGE, folder))):
      text = open(os.path.join(PACKAGE, folder, name)).read() if name.endswith(".py") else ""
      if "__main__" in text:
        found.append(f"{folder}.{name[:-3]}")
  return found


def test_the_commands_are_found():
  assert {"bench.search", "bench.memory", "bench.collectives",
          "experiments.compare"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_every_command_starts_and_lists_its_flags(command):
  """`--help` lists the command's own flags (absl exits 1 after --help in some versions, so
  the output is what is read, not the status)."""
  source = open(os.path.join(PACKAGE, *command.split(".")) + ".py").read()
  own = re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source)
  assert own, command
  result = subprocess.run([sys.executable, "-m", f"jaxdistill.{command}", "--help"], cwd=ROOT,
                          env=xla_env.env(1), capture_output=True, text=True, timeout=300)
  output = result.stdout + result.stderr
  assert "Traceback" not in output, output[-3000:]
  for flag in own:  # a boolean flag is listed as --[no]flag
    assert f"--{flag}" in output or f"--[no]{flag}" in output, (flag, output[-3000:])
  # a usage line continued with a backslash is printed as written (a docstring that is not
  # raw joins it with the next: bench.memory's --help printed one garbled line)
  for line in source.split('"""')[1].splitlines():
    if line.rstrip().endswith("\\"):
      assert line.rstrip() in output, (line, output[:2000])


def test_every_command_imports_beside_the_cli_without_a_flag_clash():
  """A command defines its flags when it runs, not when it is imported: tests and scripts
  import their functions in processes that also import jaxdistill.main (its --out, --config);
  a flag defined at import raised DuplicateFlagError in 17 tests of the suite."""
  modules = ["jaxdistill.main"] + [f"jaxdistill.{command}" for command in _commands()]
  code = "; ".join(f"import {module}" for module in modules)
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=xla_env.env(1),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


def test_the_search_benchmark_lm_mode_runs():
  """bench.search's LM share (the LM-backed search against the same search with a free
  expand) at a tiny size: it runs, and the tree operations are a share of the whole."""
  from jaxdistill.bench import search
  row = search.lm_share(4, 2, 2)
  assert row["search_s"] > 0 and 0 < row["tree_ops_share"] < 1, row
