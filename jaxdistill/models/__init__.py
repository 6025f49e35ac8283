"""Qwen2/Qwen2.5 model in Flax NNX and its Hugging Face port."""

from jaxdistill.models.hf_port import CheckpointError, from_pretrained, save_pretrained
from jaxdistill.models.qwen2 import (KVCache, ModelOutput, Qwen2Config, Qwen2Model, init_model,
                                     num_params)

__all__ = ["CheckpointError", "KVCache", "ModelOutput", "Qwen2Config", "Qwen2Model",
           "from_pretrained", "init_model", "num_params", "save_pretrained"]
