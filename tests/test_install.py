"""A non-editable install runs the CLI from any directory: `pip install .` builds a wheel
that carries the package and its configs, and `--config countdown.py:smoke` finds them."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_install_runs_the_cli_from_an_unrelated_directory(tmp_path):
  site = tmp_path / "site"
  # the project's own wheel (no dependencies: they are this environment's), not editable
  build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--target", str(site), ROOT],
                         capture_output=True, text=True)
  assert build.returncode == 0, build.stderr[-2000:]
  assert (site / "jaxdistill" / "configs" / "countdown.py").exists()
  assert not (site / "configs").exists()  # no top-level package named 'configs'
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  where = subprocess.run([sys.executable, "-c", "import jaxdistill; print(jaxdistill.__file__)"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
  assert where.stdout.startswith(str(site)), where.stdout  # the installed copy, not the checkout
  run = subprocess.run(
      [sys.executable, "-m", "jaxdistill.main", "--config", "countdown.py:smoke",
       "--workdir", "W", "--config.sft.steps=0", "--config.train.num_iterations=1",
       "--config.eval.every=0", "--config.eval.at_start=False", "--config.train.progress=False"],
      cwd=elsewhere, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-2000:]
  assert (elsewhere / "W" / "metrics.jsonl").exists()
  missing = subprocess.run([sys.executable, "-m", "jaxdistill.main", "--config", "nope.py"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
  assert missing.returncode == 2 and "countdown.py" in missing.stderr  # names what ships
