"""Multi-host: two processes on one machine (4 CPU devices each, gloo collectives) run the
same training job as one process with 8 devices, each host feeding only its own prompts."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import xla_env

from test_train import ROOT, TINY, _final_params


def _free_port() -> int:
  """A free port below the kernel's ephemeral range.

  A port the kernel hands out (bind to port 0) is an ephemeral one: while process 0 is still
  importing jax, process 1's connection attempts to it take ephemeral local ports, and one of
  them can be the coordinator's own port (a TCP self-connect), after which registration
  never completes (DEADLINE_EXCEEDED in RegisterTask after 300 s: seen once in CI)."""
  low = 32768
  try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
      low = int(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    pass
  ipv6 = _bindable(socket.AF_INET6, "::1", 0)  # the coordinator binds [::]:port
  rng = random.SystemRandom()
  for _ in range(200):
    port = rng.randrange(max(1024, low - 12000), low)
    if _bindable(socket.AF_INET, "127.0.0.1", port) and (
        not ipv6 or _bindable(socket.AF_INET6, "::", port)):
      return port
  raise RuntimeError("no free port below the ephemeral range")


def _bindable(family, host: str, port: int) -> bool:
  try:
    with socket.socket(family) as s:
      s.bind((host, port))
    return True
  except OSError:
    return False


def _command(workdir, iterations=4):
  return [sys.executable, "-m", "jaxdistill.main", "--config", "configs/countdown.py:smoke",
          f"--workdir={workdir}", *TINY, f"--config.train.num_iterations={iterations}",
          "--config.train.checkpoint_every=100", f"--config.eval.every={iterations}",
          "--config.eval.num_problems=6", "--config.eval.k=2"]


def _env():
  env = xla_env.env(8, JAX_PLATFORMS="cpu")
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(name, None)
  return env


def _two_processes(workdir):
  """Start the job as 2 processes of 4 CPU devices each (gloo collectives)."""
  port = _free_port()
  processes = []
  for process_id in range(2):
    env = dict(_env(), XLA_FLAGS=xla_env.flags(4),
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(process_id))
    processes.append(subprocess.Popen(_command(workdir), cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
  return processes


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The same job as one process with 8 devices: the reference."""
  workdir = tmp_path_factory.mktemp("single")
  result = subprocess.run(_command(workdir), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _tails(processes, outputs) -> str:
  """Both processes' exit status and the end of their output (a failure in one is often
  reported by the other)."""
  return "\n".join(f"--- process {i} (exit {p.returncode}) ---\n{out[-2000:]}"
                   for i, (p, out) in enumerate(zip(processes, outputs)))


def _rows(workdir):
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def _assert_same_run(a_dir, b_dir):
  """Metrics rows and final parameters of two runs agree (exact where no float reduction
  over devices is involved)."""
  a, b = _rows(a_dir), _rows(b_dir)
  # four updates, then the final test evaluation and the final validation evaluation
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 4, 4]
  for ra, rb in zip(a, b):
    assert set(ra) == set(rb)
    for key in ra:
      if key == "elapsed_s":
        continue
      # the same sampled trajectories: rewards, token counts and scores are exact
      if key in ("reward", "solved", "generated_tokens", "completion_tokens", "skipped",
                 "trajectories") or key.startswith(("eval_", "val_")):
        assert ra[key] == rb[key], key
      else:  # reductions over 8 devices in another order: float rounding only
        np.testing.assert_allclose(rb[key], ra[key], rtol=1e-5, atol=1e-7, err_msg=key)
  step_a, params_a, position_a = _final_params(a_dir)
  step_b, params_b, position_b = _final_params(b_dir)
  assert step_a == step_b == 4 and position_a == position_b == 32
  for x, y in zip(params_a, params_b):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)


def test_two_processes_equal_one_process_through_a_sigterm_to_one_of_them(single, tmp_path):
  """The job as 2 processes of 4 devices each, and only process 1 preempted (SIGTERM): both
  processes stop after the same iteration, write one checkpoint together and exit 0; the
  same command resumes them, and the job's metrics rows and parameters equal those of one
  process with 8 devices. One process prints and logs; the other stays quiet."""
  processes = _two_processes(tmp_path)
  metrics = tmp_path / "metrics.jsonl"  # written by process 0
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
    if any(p.poll() is not None for p in processes):
      break
    time.sleep(0.05)
  if not (metrics.exists() and metrics.read_text().strip()):
    for p in processes:
      p.kill()
    pytest.fail("no iteration finished:\n" + _tails(processes, [p.communicate()[0]
                                                                for p in processes]))
  processes[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], _tails(processes, outputs)
  stopped = [line for line in outputs[0].splitlines() if line.startswith("stopped by SIGTERM")]
  assert stopped, "the run finished before the signal took effect; the test proved nothing"
  step = int(stopped[0].split("after step ")[1].split(";")[0])
  assert 1 <= step < 4 and os.listdir(tmp_path / "checkpoints") == [str(step)]
  resumed = _two_processes(tmp_path)
  outputs = [p.communicate(timeout=600)[0] for p in resumed]
  assert [p.returncode for p in resumed] == [0, 0], _tails(resumed, outputs)
  assert f"resumed from checkpoint {step}" in outputs[0]
  assert "| after |" in outputs[0] and "| after |" not in outputs[1]
  assert "resumed from" not in outputs[1]
  _assert_same_run(single, tmp_path)
