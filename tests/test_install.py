"""A non-editable install runs the CLI from any directory: `pip install .` builds a wheel
that carries the package and its configs, and `--config countdown.py:smoke` finds them."""

import os
import site
import subprocess
import sys

import pytest

import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_venv(path) -> str:
  """A new virtual environment whose own site-packages is empty; the dependencies (jax,
  flax, ...) are this environment's, reached through a .pth path entry (not a site
  directory, so this environment's editable jaxdistill is not visible there)."""
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
  python = str(path / "bin" / "python")
  purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], capture_output=True, text=True, check=True)
  ours = [p for p in site.getsitepackages() if os.path.isdir(p)]
  with open(os.path.join(purelib.stdout.strip(), "_dependencies.pth"), "w") as f:
    f.write("\n".join(ours) + "\n")
  return python


@pytest.mark.slow
def test_wheel_install_runs_the_cli_from_an_unrelated_directory(tmp_path):
  python = _fresh_venv(tmp_path / "venv")
  # `pip install .`: a wheel of the project, not editable (the dependencies are already there)
  build = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", ROOT], capture_output=True, text=True)
  assert build.returncode == 0, build.stderr[-2000:]
  installed = subprocess.run([python, "-c", "import jaxdistill, os; print(os.path.dirname("
                              "jaxdistill.__file__))"], cwd=tmp_path, capture_output=True,
                             text=True)
  package = installed.stdout.strip()
  assert package.startswith(str(tmp_path / "venv")), installed  # the wheel, not the checkout
  assert os.path.exists(os.path.join(package, "configs", "countdown.py"))
  assert not os.path.exists(os.path.join(os.path.dirname(package), "configs"))  # no top-level
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = xla_env.env(1)
  env.pop("PYTHONPATH", None)
  run = subprocess.run(
      [python, "-m", "jaxdistill.main", "--config", "countdown.py:smoke",
       "--workdir", "W", "--config.sft.steps=0", "--config.train.num_iterations=1",
       "--config.eval.every=0", "--config.eval.at_start=False", "--config.train.progress=False"],
      cwd=elsewhere, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-2000:]
  assert (elsewhere / "W" / "metrics.jsonl").exists()
  missing = subprocess.run([python, "-m", "jaxdistill.main", "--config", "nope.py"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
  assert missing.returncode == 2 and "countdown.py" in missing.stderr  # names what ships
