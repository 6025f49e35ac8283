"""Multi-host: two processes on one machine (4 CPU devices each, gloo collectives) run the
same training job as one process with 8 devices, each host feeding only its own prompts."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from test_train import ROOT, TINY, _final_params


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(workdir):
  return [sys.executable, "-m", "jaxdistill.main", "--config", "configs/countdown.py:smoke",
          f"--workdir={workdir}", *TINY, "--config.train.num_iterations=2",
          "--config.train.checkpoint_every=1", "--config.eval.every=2",
          "--config.eval.num_problems=6", "--config.eval.k=2"]


def test_two_processes_equal_one_process_with_as_many_devices(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  result = subprocess.run(_command(single), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  port = _free_port()
  processes = []
  for process_id in range(2):
    env_i = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                 JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(process_id))
    processes.append(subprocess.Popen(_command(multi), cwd=ROOT, env=env_i,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  for p, out in zip(processes, outputs):
    assert p.returncode == 0, out[-3000:]
  # one process prints and logs; the other stays quiet
  assert "| after |" in outputs[0] and "| after |" not in outputs[1]

  rows = lambda d: [json.loads(line) for line in open(d / "metrics.jsonl")]
  a, b = rows(single), rows(multi)
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 2]
  for ra, rb in zip(a, b):
    assert set(ra) == set(rb)
    for key in ra:
      if key == "elapsed_s":
        continue
      # the same sampled trajectories: rewards, token counts and scores are exact
      if key in ("reward", "solved", "generated_tokens", "completion_tokens", "skipped") or (
          key.startswith("eval_")):
        assert ra[key] == rb[key], key
      else:  # reductions over 8 devices in another order: float rounding only
        np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, atol=1e-7, err_msg=key)
  step_a, params_a, position_a = _final_params(single)
  step_b, params_b, position_b = _final_params(multi)
  assert step_a == step_b == 2 and position_a == position_b == 16
  for x, y in zip(params_a, params_b):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
