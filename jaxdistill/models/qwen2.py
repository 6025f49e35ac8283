"""Qwen2 / Qwen2.5 decoder in Flax NNX, with a value head and an explicit KV cache.

Numerics follow transformers' `Qwen2ForCausalLM`: RMSNorm and softmax in fp32, RoPE
tables in fp32, rotate-half RoPE, grouped-query attention with q/k/v biases and no o-proj
bias, SwiGLU MLP, tied or untied output head. Logits come back in fp32.

The KV cache is a pytree passed in and returned; nothing is mutated in place. A cache has
`S` slots; `valid[b, s]` says whether slot `s` of row `b` holds a real token, so rows of
different lengths share one cache (left padding, or holes). `end` is the next slot written.
"""

from __future__ import annotations

import dataclasses
import chex
import jax
import jax.numpy as jnp
from flax import nnx

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
PRECISIONS = ("auto", "highest", "tensorfloat32", "default")


def matmul_precision(dtype, precision: str = "auto") -> jax.lax.Precision:
  """The precision of the model's matmuls. 'auto': HIGHEST for float32 parameters (fp32
  means fp32 on every backend: GPUs would otherwise run fp32 dots as TF32), DEFAULT for
  bf16/fp16, which the matrix units run natively. 'tensorfloat32' trades fp32 accuracy for
  speed on GPUs."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
  if precision == "auto":
    precision = "highest" if jnp.dtype(dtype) == jnp.float32 else "default"
  return {"highest": jax.lax.Precision.HIGHEST, "tensorfloat32": jax.lax.Precision.HIGH,
          "default": jax.lax.Precision.DEFAULT}[precision]


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  """Architecture hyper-parameters (names follow the Hugging Face config where they exist)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int = 0  # 0: hidden_size // num_attention_heads
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  value_hidden_multiplier: int = 4  # value MLP: H -> m*H -> H -> 1 (1536 -> 6144 -> 1536 -> 1)

  def __post_init__(self):
    if self.head_dim == 0:
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
          f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
          f"num_key_value_heads ({self.num_key_value_heads})")


# the published Hugging Face configs (config.json of Qwen/Qwen2.5-*-Instruct): what a preset's
# model is when its shapes are needed without the weights (bench.memory)
ARCHITECTURES = {
    "qwen2.5-0.5b": Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                num_hidden_layers=24, num_attention_heads=14,
                                num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                num_hidden_layers=28, num_attention_heads=12,
                                num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_hidden_layers=28, num_attention_heads=28,
                              num_key_value_heads=4, tie_word_embeddings=False),
}


@chex.dataclass(frozen=True)
class KVCache:
  """Per-layer keys and values for `S` slots, plus which slots hold real tokens."""

  # One array per layer; keys keep slots minor so q.k contracts over a major axis: on CPU
  # the [S, D] layout lowers to one tiny GEMM per (row, head) and ran 4x slower.
  key_states: tuple[jax.Array, ...]  # layers x [B, kv_heads, head_dim, S]
  value_states: tuple[jax.Array, ...]  # layers x [B, kv_heads, S, head_dim]
  valid: jax.Array  # [B, S] bool
  end: jax.Array  # [] int32: next slot to write

  @classmethod
  def empty(cls, config: Qwen2Config, batch_size: int, num_slots: int, dtype=jnp.float32):
    """An all-empty cache for `batch_size` rows of `num_slots` slots."""
    heads, dim = config.num_key_value_heads, config.head_dim
    layers = range(config.num_hidden_layers)
    return cls(key_states=tuple(jnp.zeros((batch_size, heads, dim, num_slots), dtype)
                                for _ in layers),
               value_states=tuple(jnp.zeros((batch_size, heads, num_slots, dim), dtype)
                                  for _ in layers),
               valid=jnp.zeros((batch_size, num_slots), bool), end=jnp.zeros((), jnp.int32))


@chex.dataclass(frozen=True)
class ModelOutput:
  """What one forward pass returns."""

  logits: jax.Array | None  # [B, T, V] float32 ([B, 1, V] with last_only=True); None with
  #                          compute_logits=False
  values: jax.Array | None  # [B, T] float32 in [-1, 1] ([B, 1] with last_only=True);
  #                           None with compute_values=False
  hidden: jax.Array  # [B, T, H] final (normed) hidden state
  cache: KVCache | None


def _normal(std):
  return nnx.initializers.normal(stddev=std)


class RMSNorm(nnx.Module):
  """Root-mean-square norm computed in fp32, as in transformers."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    input_dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    # the scale in the activations' dtype, as transformers' bf16 model holds it: an fp32
    # master scale would otherwise promote the residual stream to fp32
    return self.scale[...].astype(input_dtype) * x32.astype(input_dtype)


def rope_tables(positions, head_dim: int, theta: float):
  """cos, sin tables [B, T, head_dim] in fp32 for integer positions [B, T]."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def _rotate_half(x):
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x, cos, sin):
  """Rotate x [B, T, heads, D] by the tables [B, T, D]."""
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return x * cos + _rotate_half(x) * sin


class Attention(nnx.Module):
  """Grouped-query self-attention with q/k/v biases."""

  def __init__(self, config: Qwen2Config, dtype, param_dtype, rngs: nnx.Rngs, precision=None):
    c = config
    dense = lambda i, o, bias: nnx.Linear(i, o, use_bias=bias, dtype=dtype,
                                          param_dtype=param_dtype,
                                          kernel_init=_normal(0.02), precision=precision,
                                          rngs=rngs)
    self.q_proj = dense(c.hidden_size, c.num_attention_heads * c.head_dim, True)
    self.k_proj = dense(c.hidden_size, c.num_key_value_heads * c.head_dim, True)
    self.v_proj = dense(c.hidden_size, c.num_key_value_heads * c.head_dim, True)
    self.o_proj = dense(c.num_attention_heads * c.head_dim, c.hidden_size, False)
    self.num_heads = c.num_attention_heads
    self.num_kv_heads = c.num_key_value_heads
    self.head_dim = c.head_dim
    self.precision = precision

  def __call__(self, x, cos, sin, mask, past, prefix=None):
    """x [B, T, H]; mask [B, T, S] bool; past: (keys, values, start) in cache layout, or None.

    prefix: (keys [M, kv, D, P], values [M, kv, P, D], valid [M, P]) shared by groups of
    B / M consecutive rows, attended to before the rows' own slots (one joint softmax)."""
    batch, length, _ = x.shape
    q = self.q_proj(x).reshape(batch, length, self.num_heads, self.head_dim)
    k = self.k_proj(x).reshape(batch, length, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(batch, length, self.num_kv_heads, self.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)  # [B, kv, D, T], [B, kv, T, D]
    if past is not None:
      past_k, past_v, start = past
      k = jax.lax.dynamic_update_slice(past_k, k.astype(past_k.dtype), (0, 0, 0, start))
      v = jax.lax.dynamic_update_slice(past_v, v.astype(past_v.dtype), (0, 0, start, 0))
    group = self.num_heads // self.num_kv_heads
    q = q.reshape(batch, length, self.num_kv_heads, group, self.head_dim).transpose(0, 2, 3, 1, 4)
    scale = self.head_dim ** -0.5
    scores = jnp.einsum("bkgtd,bkds->bkgts", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32, precision=self.precision)
    scores = jnp.where(mask[:, None, None, :, :], scores * scale, _MASK_VALUE)
    if prefix is None:
      probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
      out = jnp.einsum("bkgts,bksd->bkgtd", probs, v.astype(x.dtype), precision=self.precision)
    else:
      out = self._with_prefix(q, scores, v, prefix, x.dtype)
    out = out.transpose(0, 3, 1, 2, 4).reshape(batch, length, self.num_heads * self.head_dim)
    return self.o_proj(out), (k, v)


  def _with_prefix(self, q, scores, v, prefix, dtype):
    """Attention output [B, kv, g, T, D] over a shared prefix and the rows' own slots."""
    prefix_k, prefix_v, prefix_valid = prefix
    rows, kv, group, length, dim = q.shape
    shared = prefix_k.shape[0]
    per = rows // shared  # rows continuing each prefix
    slots = prefix_k.shape[-1]
    grouped = q.reshape((shared, per) + q.shape[1:])
    prefix_scores = jnp.einsum("mrkgtd,mkdp->mrkgtp", grouped, prefix_k.astype(q.dtype),
                               preferred_element_type=jnp.float32, precision=self.precision)
    prefix_scores = jnp.where(prefix_valid[:, None, None, None, None, :],
                              prefix_scores * (self.head_dim ** -0.5), _MASK_VALUE)
    joint = jnp.concatenate([prefix_scores.reshape(rows, kv, group, length, slots), scores], -1)
    probs = jax.nn.softmax(joint, axis=-1).astype(dtype)
    from_prefix = jnp.einsum("mrkgtp,mkpd->mrkgtd",
                             probs[..., :slots].reshape((shared, per) + probs.shape[1:4] +
                                                        (slots,)),
                             prefix_v.astype(dtype), precision=self.precision)
    own = jnp.einsum("bkgts,bksd->bkgtd", probs[..., slots:], v.astype(dtype),
                     precision=self.precision)
    return from_prefix.reshape(own.shape) + own


class MLP(nnx.Module):
  """SwiGLU feed-forward block."""

  def __init__(self, config: Qwen2Config, dtype, param_dtype, rngs: nnx.Rngs, precision=None):
    dense = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                                    kernel_init=_normal(0.02), precision=precision, rngs=rngs)
    self.gate_proj = dense(config.hidden_size, config.intermediate_size)
    self.up_proj = dense(config.hidden_size, config.intermediate_size)
    self.down_proj = dense(config.intermediate_size, config.hidden_size)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm attention + MLP block."""

  def __init__(self, config: Qwen2Config, dtype, param_dtype, rngs: nnx.Rngs, precision=None):
    self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype)
    self.self_attn = Attention(config, dtype, param_dtype, rngs, precision)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps,
                                            param_dtype)
    self.mlp = MLP(config, dtype, param_dtype, rngs, precision)

  def __call__(self, x, cos, sin, mask, past, prefix=None):
    attn, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past, prefix)
    x = x + attn
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, kv


class ValueHead(nnx.Module):
  """MLP on the final hidden state: H -> m*H -> H -> 1, ReLU, tanh output; fp32 params and
  fp32 (HIGHEST) matmuls whatever the body's dtype: it is small next to the body."""

  def __init__(self, hidden_size: int, multiplier: int, rngs: nnx.Rngs):
    wide = hidden_size * multiplier
    highest = jax.lax.Precision.HIGHEST
    self.fc1 = nnx.Linear(hidden_size, wide, precision=highest, rngs=rngs)
    self.fc2 = nnx.Linear(wide, hidden_size, precision=highest, rngs=rngs)
    self.out = nnx.Linear(hidden_size, 1, kernel_init=_normal(0.01), precision=highest,
                          rngs=rngs)

  def __call__(self, hidden):
    h = jax.nn.relu(self.fc1(hidden.astype(jnp.float32)))
    h = jax.nn.relu(self.fc2(h))
    return jnp.tanh(self.out(h)[..., 0])


LAYERS = "layers"  # the key of the decoder layers in a Qwen2Model's state (`self.layers`)


class Qwen2Model(nnx.Module):
  """Qwen2 causal LM plus value head. `model(tokens)` -> ModelOutput(logits, values, ...).

  dtype: the compute dtype of the body (activations, matmul inputs, KV cache);
  param_dtype: the dtype the parameters are stored in. Training keeps fp32 master weights
  with bf16 compute (as MaxText and T5X do): a bf16 weight near 0.02 is spaced 1.2e-4 from
  its neighbours, so Adam steps of 1e-6..1e-5 applied to bf16 weights round away. The value
  head is fp32 whatever these are. precision: see `matmul_precision` ('auto': HIGHEST for
  float32 compute, DEFAULT for bf16)."""

  def __init__(self, config: Qwen2Config, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs, precision: str = "auto"):
    self.config = config
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.precision_name = precision  # as given, to rebuild the same model (from_pretrained)
    self.precision = matmul_precision(dtype, precision)
    self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype,
                                  param_dtype=param_dtype, embedding_init=_normal(0.02),
                                  rngs=rngs)
    self.layers = nnx.List([DecoderLayer(config, dtype, param_dtype, rngs, self.precision)
                            for _ in range(config.num_hidden_layers)])
    self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype)
    if not config.tie_word_embeddings:
      self.lm_head = nnx.Linear(config.hidden_size, config.vocab_size, use_bias=False,
                                dtype=dtype, param_dtype=param_dtype, kernel_init=_normal(0.02),
                                precision=self.precision, rngs=rngs)
    self.value_head = ValueHead(config.hidden_size, config.value_hidden_multiplier, rngs)

  def output_embedding(self):
    """The [H, V] matrix mapping final hidden states to logits."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.embedding[...].T
    return self.lm_head.kernel[...]

  def token_logprobs(self, hidden, targets, *, temperature=1.0, chunk_size: int = 1024):
    """log softmax(logits / temperature)[target] [B, T] float32 of final hidden states
    [B, T, H] and target ids [B, T], never holding more than chunk_size x V logits.

    The positions are taken chunk_size at a time inside a scan whose body is rematerialised
    (jax.checkpoint), so the backward pass recomputes each chunk's logits instead of keeping
    them: memory grows with B x T x H, not B x T x V (151,936 for Qwen). chunk_size 0:
    every position at once (what the chunks must equal; for tests and benchmarks)."""
    batch, length, width = hidden.shape
    embedding = self.output_embedding()
    precision = self.precision

    def chunk_logprobs(h, t):  # h [C, H], t [C]
      logits = jnp.einsum("ch,hv->cv", h, embedding.astype(h.dtype),
                          preferred_element_type=jnp.float32, precision=precision)
      logits = logits / temperature
      taken = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
      return taken - jax.nn.logsumexp(logits, axis=-1)

    positions = batch * length
    flat_hidden, flat_targets = hidden.reshape(positions, width), targets.reshape(positions)
    if not chunk_size or chunk_size >= positions:
      return chunk_logprobs(flat_hidden, flat_targets).reshape(batch, length)
    pad = (-positions) % chunk_size
    flat_hidden = jnp.pad(flat_hidden, ((0, pad), (0, 0)))
    flat_targets = jnp.pad(flat_targets, (0, pad))
    chunks = (positions + pad) // chunk_size
    taken = jax.lax.map(lambda ht: jax.checkpoint(chunk_logprobs)(*ht),
                        (flat_hidden.reshape(chunks, chunk_size, width),
                         flat_targets.reshape(chunks, chunk_size)))
    return taken.reshape(-1)[:positions].reshape(batch, length)

  def __call__(self, tokens, *, positions=None, attention_mask=None,
               cache: KVCache | None = None, last_only: bool = False,
               compute_values: bool = True, compute_logits: bool = True,
               prefix: KVCache | None = None, remat: bool = False,
               layer_weights=None) -> ModelOutput:
    """Forward tokens [B, T] int32; with a cache they are written at slots end..end+T-1.

    attention_mask [B, T] (1 = real token) marks padding among these tokens; positions
    [B, T] default to the count of real tokens before each one (caches included).
    compute_values=False skips the value head (decoding that never reads it);
    compute_logits=False skips the output projection (logits None): the learner takes the
    log-probs it needs from `hidden` in chunks (`token_logprobs`), never all [B, T, V].
    prefix: a cache of M rows (M divides B) that rows g*B/M .. (g+1)*B/M - 1 continue: they
    attend to prefix row g before their own cache, which then holds only what follows it
    (K sampled continuations of one path share its KV instead of K copies of it).
    remat (no cache): each layer keeps only its input for the backward pass and recomputes
    the rest, so the activations kept grow with layers x B x T x H, not with the MLP's width
    or the [B, heads, T, T] attention of every layer (about a third more update compute;
    `_rematerialised_layers`).
    layer_weights (remat only): applied to each layer's weights inside the layer loop, e.g.
    `parallel.Fsdp.gather` when the model holds this device's shards of its layers
    (`LAYERS`): one layer's whole weights exist at a time, and each layer's gradient leaves
    the loop already reduced to its shards.
    """
    chex.assert_rank(tokens, 2)
    if layer_weights is not None and not (remat and cache is None):
      raise ValueError("layer_weights needs remat=True and no cache")
    batch, length = tokens.shape
    if attention_mask is None:
      attention_mask = jnp.ones((batch, length), bool)
    attention_mask = attention_mask.astype(bool)
    if cache is None:
      previous = jnp.zeros((batch,), jnp.int32)
      key_valid = attention_mask  # [B, S=T]
      start = 0
    else:
      previous = cache.valid.sum(-1).astype(jnp.int32)
      start = cache.end
      key_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, start))
    prefix_of = None
    if prefix is not None:
      shared = prefix.valid.shape[0]
      if cache is None or batch % shared:
        raise ValueError(f"a prefix of {shared} rows needs a cache and a batch that is a "
                         f"multiple of it, got batch {batch}")
      previous = previous + jnp.repeat(prefix.valid.sum(-1).astype(jnp.int32), batch // shared)
      prefix_of = lambda i: (prefix.key_states[i], prefix.value_states[i], prefix.valid)
    if positions is None:
      positions = previous[:, None] + jnp.cumsum(attention_mask, axis=-1) - 1
      positions = jnp.maximum(positions, 0)
    num_slots = key_valid.shape[1]
    query_slots = start + jnp.arange(length)
    causal = jnp.arange(num_slots)[None, :] <= query_slots[:, None]  # [T, S]
    mask = causal[None] & key_valid[:, None, :]  # [B, T, S]

    cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
    x = self.embed_tokens(tokens)
    new_keys, new_values = [], []
    if remat and cache is None:
      x = self._rematerialised_layers(x, cos, sin, mask, layer_weights or (lambda w: w))
    else:
      for i, layer in enumerate(self.layers):
        past = None if cache is None else (cache.key_states[i], cache.value_states[i], start)
        x, (k, v) = layer(x, cos, sin, mask, past, None if prefix_of is None else prefix_of(i))
        new_keys.append(k)
        new_values.append(v)
    hidden = self.norm(x)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(key_states=tuple(new_keys), value_states=tuple(new_values),
                          valid=key_valid, end=(start + length).astype(jnp.int32))
    head_input = hidden[:, -1:] if last_only else hidden
    logits = None
    if compute_logits:
      logits = jnp.einsum("bth,hv->btv", head_input,
                          self.output_embedding().astype(hidden.dtype),
                          preferred_element_type=jnp.float32, precision=self.precision)
    values = self.value_head(head_input) if compute_values else None
    return ModelOutput(logits=logits, values=values, hidden=hidden, cache=new_cache)


  def _rematerialised_layers(self, x, cos, sin, mask, layer_weights):
    """The decoder layers as a scan over their stacked weights whose body is
    rematerialised: the backward pass, a loop too, keeps each layer's input [B, T, H] and
    recomputes one layer at a time. (Unrolled layers under jax.checkpoint leave the
    scheduler free to recompute every layer before the backward starts, which XLA's CPU
    backend does: memory_analysis showed no saving.) The stacked copy of the weights costs
    one model's parameters in memory (of the shards, under fsdp); their layout on disk and in
    checkpoints is unchanged."""
    graphdef = nnx.graphdef(self.layers[0])
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves),
                           *[nnx.state(layer) for layer in self.layers])

    def body(h, weights):
      out, _ = nnx.merge(graphdef, layer_weights(weights))(h, cos, sin, mask, None)
      return out, None

    x, _ = jax.lax.scan(jax.checkpoint(body), x, stacked)
    return x


def init_model(config: Qwen2Config, seed: int = 0, dtype=jnp.float32,
               precision: str = "auto", param_dtype=jnp.float32) -> Qwen2Model:
  """A randomly initialised model (normal(0.02) weights, as transformers does)."""
  return Qwen2Model(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed),
                    precision=precision)


def compute_copy(params, dtype):
  """The params a forward pass in compute dtype reads, cast once: every floating leaf of the
  body in `dtype`, the value head (fp32 by design) as it is. Sampling and search run on this
  copy, made once per iteration, instead of casting the master weights at every step."""
  def cast(path, x):
    target = compute_dtype_of(path, x, dtype)
    return x if x.dtype == target else x.astype(target)

  return jax.tree_util.tree_map_with_path(cast, params)


def compute_dtype_of(path, leaf, dtype):
  """The dtype a forward pass in compute dtype reads the param at `path` in: `dtype` for
  the body's floating params, its own for the value head's and for integers."""
  in_value_head = any(getattr(k, "key", None) == "value_head" for k in path)
  if in_value_head or not jnp.issubdtype(leaf.dtype, jnp.floating):
    return leaf.dtype
  return jnp.dtype(dtype)


def num_params(model: nnx.Module) -> int:
  """Number of parameters in a module."""
  state = nnx.state(model, nnx.Param)
  return sum(int(x.size) for x in jax.tree.leaves(state))


def forward_flops_per_token(config: Qwen2Config, context: int) -> float:
  """Approximate forward FLOPs per token: 2 * matmul params + attention over `context`."""
  c = config
  attn_params = c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
  attn_params += c.num_attention_heads * c.head_dim * c.hidden_size
  mlp_params = 3 * c.hidden_size * c.intermediate_size
  matmul = c.num_hidden_layers * (attn_params + mlp_params) + c.hidden_size * c.vocab_size
  attention = c.num_hidden_layers * 2 * c.num_attention_heads * c.head_dim * context
  return 2.0 * matmul + 2.0 * attention

