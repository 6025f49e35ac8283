"""Mesh, shardings and multi-host start-up. One mesh axis, 'data': prompts and trajectories
are split over it, parameters are replicated, gradients are averaged with pmean."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdistill.errors import UsageError

DATA = "data"
_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                  "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
  """Call jax.distributed.initialize() when the environment describes several processes.

  Cluster environments (SLURM, Cloud TPU, ...) are detected by jax itself; elsewhere set
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process.
  """
  if not any(os.environ.get(name) for name in _MULTIHOST_ENV):
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {}
  for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
    if os.environ.get(name):
      try:
        kwargs[key] = int(os.environ[name])
      except ValueError:
        raise ValueError(f"{name} must be an integer, got {os.environ[name]!r}") from None
  jax.distributed.initialize(**kwargs)
  return True


def is_primary() -> bool:
  """True on the process that writes logs, plots and prints (process 0)."""
  return jax.process_index() == 0


def global_rows(mesh: Mesh, num_rows: int, rows_fn):
  """A [num_rows, ...] array split over 'data' whose rows each process builds itself.

  rows_fn(start, stop) returns the numpy rows [start, stop) of the global batch; it is called
  only for the rows held by this process's devices, so a host never materialises (or
  tokenises) another host's share. The result is a pytree of global jax.Arrays.
  """
  check_divisible(num_rows, mesh, "batch")
  sharding = NamedSharding(mesh, P(DATA))
  cache = {}

  def local(index):  # rows of one device's block, built once per block
    block = index[0].indices(num_rows)[:2]
    if block not in cache:
      cache[block] = rows_fn(*block)
    return cache[block]

  first = next(iter(sharding.addressable_devices_indices_map((num_rows,)).values()))
  leaves, treedef = jax.tree.flatten(local(first))  # structure and trailing shapes
  arrays = []
  for i, leaf in enumerate(leaves):
    shape = (num_rows,) + np.shape(leaf)[1:]
    arrays.append(jax.make_array_from_callback(
        shape, sharding,
        lambda index, i=i: np.asarray(jax.tree.leaves(local(index))[i]),
        dtype=np.asarray(leaf).dtype))
  return jax.tree.unflatten(treedef, arrays)


def all_rows(tree):
  """A pytree of arrays split over 'data' as numpy arrays holding every row on every
  process (rows other hosts hold are gathered; one host just copies)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (nothing to wait for on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over all (or the first num_devices) devices with an Auto 'data' axis."""
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  try:
    from jax.sharding import AxisType
    return Mesh(np.array(devices), (DATA,), axis_types=(AxisType.Auto,))
  except (ImportError, TypeError):  # older jax: every axis is Auto
    return Mesh(np.array(devices), (DATA,))


def shard_map(fn, mesh: Mesh, in_specs, out_specs):
  """jax.shard_map over the mesh with `check_vma=False`: the one boundary where per-device
  code starts.

  With the check on, every loop carry would have to be typed device-varying from its first
  value, so each array a search or a decode starts from a constant (an empty tree, a token
  buffer, a KV cache) would need to be derived from per-device data. The per-device code
  here is written as for one device instead; the price is that jax no longer adds the psum
  that the transpose of a replicated input implies: the learner sums its gradients itself
  (`learner.gradients`)."""
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def check_divisible(count: int, mesh: Mesh, name: str) -> None:
  """Clear error when a batch does not split evenly over the 'data' axis."""
  devices = mesh.shape[DATA]
  if count % devices:
    raise UsageError(f"{name}={count} does not split over {devices} devices; use a multiple "
                     f"of {devices}")


def replicate(tree, mesh: Mesh):
  """Put every leaf of tree on all devices of mesh (a global array on every host).

  Each host passes its own copy, which must be identical on all hosts (the initial params
  and optimizer state are: they come from the same seed or checkpoint).
  """
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x  # already global
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(one, tree)


def local_copy(tree):
  """Host-local, single-device arrays of a replicated pytree (for host-side work such as
  evaluation): the first local device's copy, without copying, committed to its device.
  Replicated compute gains nothing from more devices, and one placement for trained and
  loaded params lets a jitted evaluation compiled for one serve the other (jit keys on input
  shardings, and on whether inputs are committed)."""
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if not x.is_fully_addressable or len(x.sharding.device_set) > 1:
      return x.addressable_data(0)
    return jax.device_put(x, x.sharding)  # commits an array made without a placement
  return jax.tree.map(one, tree)
