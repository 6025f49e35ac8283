"""Where the training state lives on the mesh, and how per-device code reads it."""

from __future__ import annotations

from jaxdistill import parallel
from jaxdistill.models.qwen2 import LAYERS, compute_copy, compute_dtype_of


class Layout:
  """Where the training state lives on the mesh: `state` and `ref` are the PartitionSpecs
  of the TrainState and the reference params (split over 'fsdp' by `parallel.shard_dim`,
  or all repeated), `fsdp` how per-device code reads them whole (None: it holds them whole).
  `whole(params)`: the compute-dtype weights a forward pass reads."""

  def __init__(self, state, ref_params, mesh, compute_dtype):
    size = parallel.fsdp_size(mesh)
    self.state = parallel.state_specs(state, size)
    self.ref = parallel.state_specs(ref_params, size)
    self.compute_dtype = compute_dtype
    self.fsdp = None if size == 1 else parallel.Fsdp(
        state.params, size,
        dtype=lambda path, leaf: compute_dtype_of(path, leaf, compute_dtype))

  def whole(self, params):
    """The weights sampling, search and scoring read, cast once per iteration (gathered
    once per iteration from the shards under fsdp)."""
    if self.fsdp is None:
      return compute_copy(params, self.compute_dtype)
    return self.fsdp.gather(params)

  def read_ref(self, ref_params):
    """(params, layer_weights) a forward pass of the KL reference takes: under fsdp all but
    the decoder layers gathered, and the gather the layer loop applies to each layer (the
    reference is only scored, once per iteration: no whole copy of it is needed beside the
    policy's)."""
    if self.fsdp is None:
      return ref_params, None
    return self.fsdp.by_layer(ref_params, LAYERS)
