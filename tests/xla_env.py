"""XLA flags of the suite, for the test process and for the programs the tests start."""

import os

# extra XLA flags for the suite and every program it starts (none by default). The kernels'
# optimisation is left out per test instead (conftest.py: JAX_DISABLE_MOST_OPTIMIZATIONS),
# so that the tests of the 151,936-row vocabulary, which it would slow down, keep it
EXTRA = os.environ.get("JAXDISTILL_TEST_XLA_FLAGS", "")


def flags(devices: int) -> str:
  return f"{EXTRA} --xla_force_host_platform_device_count={devices}".strip()


def pool_size(devices: int) -> int:
  """XLA:CPU threads for `devices` devices, as jaxdistill sets them (cpu_threads.pool_size)."""
  from jaxdistill import cpu_threads  # jax-free: importing it starts nothing
  return cpu_threads.pool_size(devices)


def env(devices: int, **extra) -> dict:
  """os.environ for a subprocess that sees `devices` fake CPU devices."""
  return dict(os.environ, XLA_FLAGS=flags(devices), **extra)
