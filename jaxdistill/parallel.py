"""Mesh, shardings and multi-host start-up. One mesh axis, 'data': prompts and trajectories
are split over it, parameters are replicated, gradients are averaged with pmean."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh

DATA = "data"
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                  "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
  """Call jax.distributed.initialize() when the environment describes several processes."""
  if not any(os.environ.get(name) for name in _MULTIHOST_ENV):
    return False
  jax.distributed.initialize()
  return True


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over all (or the first num_devices) devices with an Auto 'data' axis."""
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  try:
    from jax.sharding import AxisType
    return Mesh(np.array(devices), (DATA,), axis_types=(AxisType.Auto,))
  except (ImportError, TypeError):  # older jax: every axis is Auto
    return Mesh(np.array(devices), (DATA,))


def check_divisible(count: int, mesh: Mesh, name: str) -> None:
  """Clear error when a batch does not split evenly over the 'data' axis."""
  devices = mesh.shape[DATA]
  if count % devices:
    raise ValueError(f"{name}={count} does not split over {devices} devices; use a multiple "
                     f"of {devices}")
