"""Enough XLA:CPU threads for programs whose collectives overlap (several CPU devices).

XLA:CPU runs every device's work on one thread pool of max(cores, devices) threads, and a
collective blocks its thread until every device has reached it. A program in which a
collective can start while a loop's collectives still wait (`jaxdistill.bench.hlo_collectives`:
the update's count psum beside the KL reference's layer loop under `parallel.fsdp`) can then
block two or three threads of each device at once; with one thread per device every thread ends up
waiting for a device that has none left, and the run dies after XLA's 40 s rendezvous
timeout ("Termination timeout for all gather"). GPUs and TPUs run each device's collectives
in program order and are not affected.

The pool's size is read once, from the environment variable NPROC, when jax starts its CPU
backend; `configure()` sets it (unless the user did) before that, from the fake device count
in XLA_FLAGS (`--xla_force_host_platform_device_count`) or JAX_NUM_CPU_DEVICES. Importing
`jaxdistill` calls it, so every entry point (the CLI, bench, experiments, the tests) gets it
as long as jax's CPU backend has not started before the import."""

from __future__ import annotations

import os
import re
import sys

# threads per device the pool gets: the most any training program blocks at once, read off
# the compiled programs by `python -m jaxdistill.bench.collectives` (tests/test_collectives.py
# fails when a program needs more). 3 under fsdp with learner.remat: the KL reference's and
# the update's layer loops gather side by side while the update's count psum starts; 2
# without remat. (An optimization barrier cannot order them: XLA:CPU erases it before its
# runtime builds the thunk graph.)
THREADS_PER_DEVICE = 3


def cpu_devices(environ=os.environ) -> int:
  """The fake CPU device count the environment asks jax for (1 when it asks for none)."""
  found = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                     environ.get("XLA_FLAGS", ""))
  count = int(found[-1]) if found else 1
  if environ.get("JAX_NUM_CPU_DEVICES", "").isdigit():
    count = max(count, int(environ["JAX_NUM_CPU_DEVICES"]))
  return count


def pool_size(devices: int, cores: int | None = None) -> int:
  """The XLA:CPU pool that no training program can exhaust with blocked collectives."""
  return max(cores or os.cpu_count() or 1, THREADS_PER_DEVICE * devices)


def _backend_started() -> bool:
  jax = sys.modules.get("jax")
  if jax is None:
    return False
  try:
    from jax._src import xla_bridge
    return bool(getattr(xla_bridge, "_backends", {}))
  except ImportError:  # pragma: no cover: a jax without the private module; assume not
    return False


def configure(environ=os.environ) -> str | None:
  """Set NPROC for several CPU devices; returns a warning when it is too late (jax's CPU
  backend has started) or the user's NPROC is too small, None otherwise."""
  devices = cpu_devices(environ)
  if devices <= 1:
    return None
  wanted = pool_size(devices)
  given = environ.get("NPROC", "")
  if given:
    if given.isdigit() and int(given) < THREADS_PER_DEVICE * devices:
      return (f"NPROC={given} gives XLA:CPU fewer than {THREADS_PER_DEVICE} threads for each "
              f"of {devices} devices; a training program whose collectives overlap can hang "
              f"(use NPROC={wanted} or unset it)")
    return None
  if _backend_started():
    return (f"jax's CPU backend started before jaxdistill was imported, with its default "
            f"thread pool for {devices} devices; a training program whose collectives overlap "
            f"can hang: set NPROC={wanted} in the environment")
  environ["NPROC"] = str(wanted)
  return None
