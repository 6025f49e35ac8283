"""Mesh, shardings and multi-host start-up.

The mesh has two axes, 'data' x 'fsdp' (`make_mesh`). Prompts and trajectories are split over
both (`ROWS`: every device holds its own rows). Parameters, gradients and optimizer state are
split over 'fsdp' (`parallel.fsdp` devices; 1: every device holds all of them) and repeated
over 'data'. Per-device code reads whole weights through `Fsdp.gather`."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdistill.errors import UsageError

DATA = "data"
FSDP = "fsdp"
ROWS = (DATA, FSDP)  # the axes prompts and trajectories are split over: all of them
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


def say(text: str) -> None:
  """Print on the primary process only (one line per event, not one per host)."""
  if is_primary():
    print(text)


def global_rows(mesh: Mesh, num_rows: int, rows_fn):
  """A [num_rows, ...] array split over 'data' whose rows each process builds itself.

  rows_fn(start, stop) returns the numpy rows [start, stop) of the global batch; it is called
  only for the rows held by this process's devices, so a host never materialises (or
  tokenises) another host's share. The result is a pytree of global jax.Arrays.
  """
  check_divisible(num_rows, mesh, "batch")
  sharding = NamedSharding(mesh, P(ROWS))
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


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> Mesh:
  """A 'data' x 'fsdp' mesh of Auto axes over all (or the first num_devices) devices, fsdp
  consecutive devices per parameter group (on a GPU host: one host's devices, joined by
  NVLink; the 'data' axis then crosses hosts, where only gradients travel)."""
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  if fsdp < 1 or len(devices) % fsdp:
    raise UsageError(f"parallel.fsdp={fsdp} must divide the {len(devices)} devices")
  grid = np.array(devices).reshape(len(devices) // fsdp, fsdp)
  try:
    from jax.sharding import AxisType
    return Mesh(grid, ROWS, axis_types=(AxisType.Auto,) * 2)
  except (ImportError, TypeError):  # older jax: every axis is Auto
    return Mesh(grid, ROWS)


def fsdp_size(mesh: Mesh) -> int:
  return mesh.shape[FSDP] if FSDP in mesh.shape else 1


def shard_dim(shape, fsdp: int) -> int:
  """The dimension a parameter (or its gradient and Adam moments: the same shape) is split
  along over `fsdp` devices, -1 for none: the largest dimension that splits evenly, of
  matrices only (embeddings, kernels: nearly all the bytes); vectors (norm scales, biases)
  are repeated, and so is a matrix none of whose dimensions splits."""
  if fsdp == 1 or len(shape) < 2:
    return -1
  fits = [d for d in range(len(shape)) if shape[d] % fsdp == 0]
  return max(fits, key=lambda d: (shape[d], -d)) if fits else -1


def spec_of(shape, fsdp: int) -> P:
  dim = shard_dim(shape, fsdp)
  return P() if dim < 0 else P(*([None] * dim + [FSDP]))


def state_specs(tree, fsdp: int):
  """The PartitionSpec of every leaf of tree (params, optimizer state, a TrainState): split
  over 'fsdp' by `shard_dim`, scalars and vectors repeated."""
  return jax.tree.map(lambda x: spec_of(_shape(x), fsdp), tree)


def _shape(x) -> tuple:
  return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


class Fsdp:
  """How per-device code (inside `shard_map`) sees parameters split over 'fsdp': `gather`
  rebuilds whole weights from this device's shards; the gradient of a gathered weight comes
  back to the shards reduce-scattered over 'fsdp'. Built from the global params (their
  shapes pick the split dimensions), used with their local shards."""

  def __init__(self, params, fsdp: int, dtype=None):
    self.dims = jax.tree.map(lambda x: shard_dim(_shape(x), fsdp), params)
    self.dtype = dtype  # dtype(path, leaf): the dtype each whole weight is gathered in
    self.prefix = ()  # where these params sit in the tree `dtype` sees (`part`)

  def gather(self, params, keep=()):
    """Whole weights from this device's shards, each in `dtype(path, leaf)` (e.g. the
    compute dtype of the body): cast before the gather, so that only compute-dtype bytes
    travel and stay; the gradient goes back in float32 (each device's share summed in
    float32, as replicated training sums its gradients). Leaves under the top-level keys
    in `keep` stay shards: their reader gathers them itself (the model's layer loop, one
    layer at a time, through `part`)."""
    def one(path, shard, dim):
      if path and getattr(path[0], "key", None) in keep:
        return shard
      target = (shard.dtype if self.dtype is None
                else jnp.dtype(self.dtype(self.prefix + path, shard)))
      return _gather(shard, dim, target)
    return jax.tree_util.tree_map_with_path(one, params, self.dims)

  def by_layer(self, params, layers: str):
    """(params gathered but params[layers], the gather of one of params[layers]'s stacked
    layers): what a layer loop that gathers each layer as it reaches it takes (the
    model's `layer_weights`)."""
    return self.gather(params, keep=(layers,)), self.part(layers, 0).gather

  def part(self, *keys) -> "Fsdp":
    """The Fsdp of the sub-tree params[keys[0]][keys[1]]... (e.g. ("layers", 0): one
    decoder layer, whose gather serves every layer of the same shapes)."""
    part = object.__new__(Fsdp)
    part.dims = functools.reduce(lambda tree, key: tree[key], keys, self.dims)
    part.dtype = self.dtype
    part.prefix = self.prefix + tuple(jax.tree_util.DictKey(key) for key in keys)
    return part

  def square_norm(self, tree):
    """The squared global norm of a tree of shards (repeated leaves counted once)."""
    split = whole = jnp.zeros((), jnp.float32)
    for x, dim in zip(jax.tree.leaves(tree), jax.tree.leaves(self.dims), strict=True):
      square = jnp.sum(jnp.square(x.astype(jnp.float32)))
      split, whole = (split + square, whole) if dim >= 0 else (split, whole + square)
    return jax.lax.psum(split, FSDP) + whole

  def all_true(self, flag):
    """flag on every device of the group (a check over shards must agree everywhere)."""
    return jax.lax.pmin(flag.astype(jnp.int32), FSDP) > 0


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _gather(shard, dim: int, dtype):
  return _gather_forward(shard, dim, dtype)[0]


def _gather_forward(shard, dim, dtype):
  value = shard.astype(dtype)
  if dim >= 0:
    value = jax.lax.all_gather(value, FSDP, axis=dim, tiled=True)
  return value, jnp.zeros((), shard.dtype)  # the residual carries the shard's dtype


def _gather_backward(dim, dtype, residual, cotangent):
  cotangent = cotangent.astype(jnp.float32)
  if dim >= 0:  # each device's gradient of the whole weight, summed and split back
    cotangent = jax.lax.psum_scatter(cotangent, FSDP, scatter_dimension=dim, tiled=True)
  else:  # a repeated weight: every device's gradient, summed
    cotangent = jax.lax.psum(cotangent, FSDP)
  return (cotangent.astype(residual.dtype),)


_gather.defvjp(_gather_forward, _gather_backward)


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
  """Clear error when a batch does not split evenly over the devices."""
  devices = mesh.size
  if count % devices:
    raise UsageError(f"{name}={count} does not split over {devices} devices; use a multiple "
                     f"of {devices}")


def replicate(tree, mesh: Mesh, specs=None):
  """Put every leaf of tree on the devices of mesh (a global array on every host): whole on
  each, or split as `specs` (a tree of PartitionSpecs, `state_specs`) says.

  Each host passes its own copy, which must be identical on all hosts (the initial params
  and optimizer state are: they come from the same seed or checkpoint).
  """
  if specs is None:
    specs = jax.tree.map(lambda _: P(), tree)
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                           is_leaf=lambda x: isinstance(x, P))
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def one(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x  # already global
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(one, tree, shardings)


def local_copy(tree):
  """Host-local, single-device arrays of a replicated pytree (for host-side work such as
  evaluation): the first local device's copy, without copying, committed to its device.
  Replicated compute gains nothing from more devices, and one placement for trained and
  loaded params lets a jitted evaluation compiled for one serve the other (jit keys on input
  shardings, and on whether inputs are committed)."""
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if not x.sharding.is_fully_replicated:  # split over 'fsdp': gathered whole
      if x.is_fully_addressable:
        return jax.device_put(x, jax.local_devices()[0])
      from jax.experimental import multihost_utils
      return jax.device_put(multihost_utils.process_allgather(x, tiled=True),
                            jax.local_devices()[0])
    if not x.is_fully_addressable or len(x.sharding.device_set) > 1:
      return x.addressable_data(0)
    return jax.device_put(x, x.sharding)  # commits an array made without a placement
  return jax.tree.map(one, tree)
