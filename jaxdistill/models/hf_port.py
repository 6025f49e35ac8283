"""Hugging Face Qwen2/Qwen2.5 directory (config.json + *.safetensors) <-> Qwen2Model.

`from_pretrained` maps every tensor of a local checkpoint into the Flax model and checks
names and shapes; `save_pretrained` writes a directory that transformers (and so vLLM or
SGLang) loads. The value head is not part of a HF checkpoint: it is stored beside it in
`value_head.safetensors` and restored when present, otherwise freshly initialised.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdistill.errors import UsageError
from jaxdistill.models.qwen2 import Qwen2Config, Qwen2Model

VALUE_HEAD_FILE = "value_head.safetensors"
_SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM",)
_HOW_TO_GET_WEIGHTS = (
    "on a machine with internet run `hf download Qwen/Qwen2.5-1.5B-Instruct "
    "--local-dir DIR` and copy DIR here")


class CheckpointError(UsageError, ValueError):
  """A checkpoint directory that cannot be loaded; the message is one line."""


def _read_config(path: str) -> dict:
  if not os.path.exists(path):
    raise CheckpointError(f"checkpoint directory {path!r} does not exist; {_HOW_TO_GET_WEIGHTS}")
  if not os.path.isdir(path):
    raise CheckpointError(f"{path!r} is a file; pass the checkpoint directory that holds "
                          "config.json and *.safetensors")
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise CheckpointError(f"{path!r} has no config.json; is it a Hugging Face model "
                          f"directory? {_HOW_TO_GET_WEIGHTS}")
  try:
    with open(config_path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{config_path} is not valid JSON ({e})") from None


def config_from_hf(hf: dict) -> Qwen2Config:
  """Qwen2Config from a Hugging Face config dict; rejects other architectures clearly."""
  model_type = hf.get("model_type")
  architectures = hf.get("architectures") or []
  if model_type != "qwen2" or (architectures and
                               not set(architectures) & set(_SUPPORTED_ARCHITECTURES)):
    raise CheckpointError(
        f"config.json describes model_type={model_type!r} architectures={architectures}; "
        "jaxdistill loads Qwen2/Qwen2.5 causal LMs (model_type 'qwen2', Qwen2ForCausalLM)")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", None):
    raise CheckpointError(f"rope_type {rope_type!r} is not supported (only default RoPE)")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  if hf.get("use_sliding_window"):
    raise CheckpointError("use_sliding_window=true is not supported; Qwen2.5 checkpoints "
                          "ship with it off")
  try:
    return Qwen2Config(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=int(hf["num_attention_heads"]),
        num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        head_dim=int(hf.get("head_dim") or 0),
        rope_theta=float(theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
    )
  except KeyError as e:
    raise CheckpointError(f"config.json lacks the field {e.args[0]!r}") from None


def config_to_hf(config: Qwen2Config, dtype) -> dict:
  """Hugging Face config dict (readable by transformers 4.x and 5.x)."""
  return {
      "architectures": ["Qwen2ForCausalLM"],
      "model_type": "qwen2",
      "vocab_size": config.vocab_size,
      "hidden_size": config.hidden_size,
      "intermediate_size": config.intermediate_size,
      "num_hidden_layers": config.num_hidden_layers,
      "num_attention_heads": config.num_attention_heads,
      "num_key_value_heads": config.num_key_value_heads,
      "head_dim": config.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": config.max_position_embeddings,
      "rms_norm_eps": config.rms_norm_eps,
      "rope_theta": config.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "tie_word_embeddings": config.tie_word_embeddings,
      "use_sliding_window": False,
      "attention_dropout": 0.0,
      "torch_dtype": jnp.dtype(dtype).name,
      "dtype": jnp.dtype(dtype).name,
  }


def _tensor_map(config: Qwen2Config) -> dict[str, tuple[tuple, tuple, bool]]:
  """HF tensor name -> (path in the model's pure state dict, HF shape, transpose?)."""
  c = config
  heads, kv, d, h, f = (c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                        c.hidden_size, c.intermediate_size)
  names = {"model.embed_tokens.weight": (("embed_tokens", "embedding"), (c.vocab_size, h), False),
           "model.norm.weight": (("norm", "scale"), (h,), False)}
  if not c.tie_word_embeddings:
    names["lm_head.weight"] = (("lm_head", "kernel"), (c.vocab_size, h), True)
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    names |= {
        p + "input_layernorm.weight": (("layers", i, "input_layernorm", "scale"), (h,), False),
        p + "post_attention_layernorm.weight":
            (("layers", i, "post_attention_layernorm", "scale"), (h,), False),
        p + "self_attn.q_proj.weight": (("layers", i, "self_attn", "q_proj", "kernel"),
                                        (heads * d, h), True),
        p + "self_attn.q_proj.bias": (("layers", i, "self_attn", "q_proj", "bias"),
                                      (heads * d,), False),
        p + "self_attn.k_proj.weight": (("layers", i, "self_attn", "k_proj", "kernel"),
                                        (kv * d, h), True),
        p + "self_attn.k_proj.bias": (("layers", i, "self_attn", "k_proj", "bias"),
                                      (kv * d,), False),
        p + "self_attn.v_proj.weight": (("layers", i, "self_attn", "v_proj", "kernel"),
                                        (kv * d, h), True),
        p + "self_attn.v_proj.bias": (("layers", i, "self_attn", "v_proj", "bias"),
                                      (kv * d,), False),
        p + "self_attn.o_proj.weight": (("layers", i, "self_attn", "o_proj", "kernel"),
                                        (h, heads * d), True),
        p + "mlp.gate_proj.weight": (("layers", i, "mlp", "gate_proj", "kernel"), (f, h), True),
        p + "mlp.up_proj.weight": (("layers", i, "mlp", "up_proj", "kernel"), (f, h), True),
        p + "mlp.down_proj.weight": (("layers", i, "mlp", "down_proj", "kernel"), (h, f), True),
    }
  return names


def _safetensors_files(path: str) -> list[str]:
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
    if missing:
      raise CheckpointError(f"{index} names shard(s) that are not in {path!r}: {missing}")
    return [os.path.join(path, f) for f in files]
  if os.path.exists(single):
    return [single]
  raise CheckpointError(f"{path!r} has neither model.safetensors nor "
                        "model.safetensors.index.json (only safetensors weights are read)")


def _read_tensors(files: list[str], wanted: Callable[[str], bool]) -> dict[str, jax.Array]:
  from safetensors import SafetensorError, safe_open
  tensors = {}
  for file in files:
    try:
      with safe_open(file, framework="flax") as f:
        for name in f.keys():
          if wanted(name):
            tensors[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"cannot read {file}: {str(e).splitlines()[0]} (truncated or "
                            "corrupted download?)") from None
  return tensors


def _set(tree: dict, path: tuple, value):
  for key in path[:-1]:
    tree = tree[key]
  if path[-1] not in tree:
    raise KeyError(path)
  tree[path[-1]] = value


def from_pretrained(path: str, dtype=jnp.float32, seed: int = 0, precision: str = "auto",
                    param_dtype=jnp.float32) -> Qwen2Model:
  """Load a local Hugging Face Qwen2/Qwen2.5 directory into a Qwen2Model computing in `dtype`
  with parameters stored in `param_dtype` (fp32 master weights by default: a bf16
  checkpoint's values are exact in fp32, and training needs them there; pass the
  checkpoint's dtype to hold a model for inference only). Matmul precision: see
  `qwen2.matmul_precision`."""
  config = config_from_hf(_read_config(path))
  files = _safetensors_files(path)
  mapping = _tensor_map(config)
  tensors = _read_tensors(files, lambda name: name in mapping)
  missing = [name for name in mapping if name not in tensors]
  if missing:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise CheckpointError(f"checkpoint {path!r} lacks tensor(s) {missing[:3]}{more}")

  abstract = nnx.eval_shape(lambda: Qwen2Model(config, dtype=dtype, param_dtype=param_dtype,
                                               rngs=nnx.Rngs(seed), precision=precision))
  graphdef, abstract_state = nnx.split(abstract)
  pure = nnx.to_pure_dict(abstract_state)
  for name, (target, shape, transpose) in mapping.items():
    tensor = tensors.pop(name)
    if tuple(tensor.shape) != shape:
      raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, config.json "
                            f"implies {shape}")
    _set(pure, target, jnp.asarray(tensor.T if transpose else tensor, dtype=param_dtype))
  pure["value_head"] = _value_head_params(path, config, seed)
  nnx.replace_by_pure_dict(abstract_state, pure)
  return nnx.merge(graphdef, abstract_state)


def _value_head_params(path: str, config: Qwen2Config, seed: int) -> dict:
  from jaxdistill.models.qwen2 import ValueHead
  fresh = nnx.to_pure_dict(nnx.state(ValueHead(
      config.hidden_size, config.value_hidden_multiplier, nnx.Rngs(seed + 1))))
  file = os.path.join(path, VALUE_HEAD_FILE)
  if not os.path.exists(file):
    return fresh
  stored = _read_tensors([file], lambda name: True)
  for layer, params in fresh.items():
    for param, value in params.items():
      name = f"{layer}.{param}"
      if name not in stored or stored[name].shape != value.shape:
        raise CheckpointError(f"{file}: tensor {name} is missing or has the wrong shape")
      params[param] = jnp.asarray(stored[name], jnp.float32)
  return fresh


def save_pretrained(model: Qwen2Model, path: str, dtype=None) -> None:
  """Write `path/config.json`, `model.safetensors` (HF names) and the value head (fp32).

  dtype: the weights' dtype in the directory; default the model's compute dtype (bf16 for
  the qwen presets, the dtype Qwen's checkpoints ship in), whatever the master weights'."""
  dtype = jnp.dtype(model.dtype if dtype is None else dtype)
  from safetensors.flax import save_file  # handles bf16, which numpy cannot
  os.makedirs(path, exist_ok=True)
  config = model.config
  pure = nnx.to_pure_dict(nnx.state(model))
  tensors = {}
  for name, (source, _, transpose) in _tensor_map(config).items():
    value = pure
    for key in source:
      value = value[key]
    tensors[name] = jnp.asarray(value.T if transpose else value, dtype=dtype)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  value_head = {f"{layer}.{param}": jnp.asarray(v)
                for layer, params in pure["value_head"].items() for param, v in params.items()}
  save_file(value_head, os.path.join(path, VALUE_HEAD_FILE))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(config, dtype), f, indent=2)
