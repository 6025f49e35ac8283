"""Bad checkpoints give one clear CheckpointError line; sharded checkpoints load."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdistill.models import CheckpointError, from_pretrained


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def _error(path):
  with pytest.raises(CheckpointError) as info:
    from_pretrained(path)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_missing_directory_says_how_to_get_weights(tmp_path):
  message = _error(str(tmp_path / "nope"))
  assert "does not exist" in message and "hf download" in message


def test_directory_without_config(tmp_path):
  assert "no config.json" in _error(str(tmp_path))


def test_other_architecture_is_named(gqa_checkpoint, tmp_path):
  path = _copy(gqa_checkpoint[0], tmp_path / "llama")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  config["model_type"], config["architectures"] = "llama", ["LlamaForCausalLM"]
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  message = _error(path)
  assert "llama" in message and "qwen2" in message


def test_missing_tensor_is_named(gqa_checkpoint, tmp_path):
  path = _copy(gqa_checkpoint[0], tmp_path / "missing")
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, file)
  assert "model.layers.1.mlp.up_proj.weight" in _error(path)


def test_wrong_shape_is_named(gqa_checkpoint, tmp_path):
  path = _copy(gqa_checkpoint[0], tmp_path / "shape")
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  tensors["model.layers.0.self_attn.k_proj.bias"] = np.zeros((7,), np.float32)
  save_file(tensors, file)
  message = _error(path)
  assert "model.layers.0.self_attn.k_proj.bias" in message and "(7,)" in message


def test_truncated_file(gqa_checkpoint, tmp_path):
  path = _copy(gqa_checkpoint[0], tmp_path / "truncated")
  file = os.path.join(path, "model.safetensors")
  size = os.path.getsize(file)
  with open(file, "r+b") as f:
    f.truncate(size // 2)
  message = _error(path)
  assert "model.safetensors" in message and "truncated" in message


def test_sharded_checkpoint_loads_like_single_file(gqa_checkpoint, tmp_path):
  path = _copy(gqa_checkpoint[0], tmp_path / "sharded")
  tensors = load_file(os.path.join(path, "model.safetensors"))
  os.remove(os.path.join(path, "model.safetensors"))
  names = sorted(tensors)
  halves = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for file, part in halves.items():
    save_file({n: tensors[n] for n in part}, os.path.join(path, file))
    weight_map |= {n: file for n in part}
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
  np.testing.assert_array_equal(np.asarray(from_pretrained(path)(tokens).logits),
                                np.asarray(from_pretrained(gqa_checkpoint[0])(tokens).logits))


def test_rope_theta_from_older_field(gqa_checkpoint, tmp_path):
  path = _copy(gqa_checkpoint[0], tmp_path / "old")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  theta = config.pop("rope_parameters")["rope_theta"]
  config["rope_theta"] = theta
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  assert from_pretrained(path).config.rope_theta == theta
