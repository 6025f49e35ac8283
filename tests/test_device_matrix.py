"""The run matrix: every method x parallel.fsdp {1, 8} x learner.remat {off, on}, one tiny
iteration each on 8 CPU devices, started as a user starts them (`python -m jaxdistill.main`
with the device count in XLA_FLAGS and no NPROC: the thread pool is jaxdistill's own), each
finishing, and fsdp 8's metrics equal to fsdp 1's.

About 8 minutes on 2 cores, so it is not part of the default run (pyproject's addopts
deselect it); run it before resolving any change to sharding or collectives:

    python -m pytest -m device_matrix tests/test_device_matrix.py
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import xla_env
from test_train import ROOT, TINY

METHODS = ["mcts_distill", "cispo", "best_of_n", "deepsearch"]
EXACT = ("reward", "trajectories", "generated_tokens")
CLOSE = ("loss", "policy_loss", "value_loss", "kl", "grad_norm")


def _run(workdir, algo: str, fsdp: int, remat: bool) -> dict:
  env = {k: v for k, v in xla_env.env(8).items() if k != "NPROC"}  # as a user starts it
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config", "configs/countdown.py:smoke",
         f"--workdir={workdir}", *TINY, f"--config.algo={algo}",
         f"--config.parallel.fsdp={fsdp}", f"--config.learner.remat={remat}",
         "--config.train.num_iterations=1", "--config.deepsearch.trajectories=3",
         "--config.deepsearch.expansions=4",
         "--config.method_learner.deepsearch.minibatches=3"]  # 1 prompt x 3 rows per device
  # a hang dies by XLA's rendezvous timeout (40 s) or by this one
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return next(row for row in rows if "loss" in row)


@pytest.mark.device_matrix
@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("algo", METHODS)
def test_each_method_and_layout_finishes_with_the_same_metrics(tmp_path, algo, remat):
  one = _run(tmp_path / "fsdp1", algo, 1, remat)
  eight = _run(tmp_path / "fsdp8", algo, 8, remat)
  for key in EXACT:
    assert eight[key] == one[key], key
  assert {key for key in CLOSE if key in one} == {key for key in CLOSE if key in eight}
  for key in (key for key in CLOSE if key in one):  # deepsearch trains no value head
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-5, atol=1e-8, err_msg=key)
