"""Test setup: 8 fake CPU devices (before jax is imported) and tiny local checkpoints."""

import os

import xla_env  # tests/ is on sys.path (pytest prepends the conftest's directory)

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_env.flags(8)).strip()
# CPU by default; a user who picks an accelerator for the suite (JAX_PLATFORMS=cuda or tpu)
# keeps the CPU platform beside it, which host callbacks (the Countdown rewards) need
_platforms = os.environ.get("JAX_PLATFORMS") or "cpu"
if "cpu" not in _platforms.split(","):
  _platforms += ",cpu"
os.environ["JAX_PLATFORMS"] = _platforms
# XLA:CPU's thread pool sized for 8 devices whose collectives overlap (jaxdistill/cpu_threads.py);
# set here, before jax starts its CPU backend, and inherited by every program a test starts
os.environ.setdefault("NPROC", str(xla_env.pool_size(8)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# runs started by tests keep their compilation cache in the repository's .jax_cache, not in
# the user's home; the test processes use the same directory, so a program that a test builds
# in process and a run it starts both compile it once
os.environ["XDG_CACHE_HOME"] = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                            ".jax_cache", "xdg")
# the suite's programs are compiled without LLVM's optimisation of their kernels (XLA's HLO
# passes, SPMD partitioning, fusion and collectives are the same; only the machine code is
# slower): compiling is about 70% of the suite's time, and at the tiny models' sizes a
# program runs for far less time than LLVM takes to optimise it. Tests marked `optimized`
# keep it (the fixture below). JAX_DISABLE_MOST_OPTIMIZATIONS=0 runs the whole suite optimised.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.environ["XDG_CACHE_HOME"], "jaxdistill", "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture(autouse=True)
def _compile_effort(request, monkeypatch):
  """Tests marked `optimized` compile with the kernels' optimisation, in this process (read
  at each compile) and in the programs they start (read when jax starts)."""
  if (request.node.get_closest_marker("optimized") is None
      or not jax.config.read("jax_disable_most_optimizations")):  # the env var, as jax read it
    yield
    return
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", True)


def make_hf_checkpoint(path, *, tied, theta, num_kv_heads, vocab_size=97, hidden=64,
                       layers=2, heads=4, seed=0):
  """Save a tiny random Qwen2ForCausalLM with transformers (non-zero biases and norms)."""
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM
  config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=num_kv_heads, tie_word_embeddings=tied,
                       rope_parameters={"rope_type": "default", "rope_theta": theta},
                       max_position_embeddings=512)
  torch.manual_seed(seed)
  model = Qwen2ForCausalLM(config).eval()
  with torch.no_grad():  # transformers zero-inits biases and ones-inits norms: perturb them
    for name, param in model.named_parameters():
      if "bias" in name or "norm" in name:
        param.add_(torch.randn_like(param) * 0.1)
  model.save_pretrained(path)
  return model


CHECKPOINT_KINDS = {
    "tied-theta1e4-mha": dict(tied=True, theta=1e4, num_kv_heads=4),
    "untied-theta1e6-gqa": dict(tied=False, theta=1e6, num_kv_heads=2),
    "untied-theta1e4-mqa": dict(tied=False, theta=1e4, num_kv_heads=1),
}


@pytest.fixture(scope="session", params=sorted(CHECKPOINT_KINDS))
def hf_checkpoint(request, tmp_path_factory):
  """(directory, torch model) for each checkpoint kind."""
  path = tmp_path_factory.mktemp(request.param)
  model = make_hf_checkpoint(str(path), **CHECKPOINT_KINDS[request.param])
  return str(path), model


@pytest.fixture(scope="session")
def gqa_checkpoint(tmp_path_factory):
  """One untied GQA checkpoint (directory, torch model)."""
  path = tmp_path_factory.mktemp("gqa")
  model = make_hf_checkpoint(str(path), **CHECKPOINT_KINDS["untied-theta1e6-gqa"])
  return str(path), model


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory):
  """The real Qwen2.5 tokenizer, built offline once per session (tests/qwen25_tokenizer.py)."""
  import qwen25_tokenizer
  return qwen25_tokenizer.build(str(tmp_path_factory.mktemp("qwen25-tokenizer")))


@pytest.fixture(scope="session")
def qwen_checkpoint(qwen_tokenizer_dir, tmp_path_factory):
  """A tiny random Qwen2 checkpoint with Qwen2.5's vocabulary size (151,936), saved with
  transformers, and the real Qwen2.5 tokenizer beside it (a local 'download')."""
  import shutil

  import qwen25_tokenizer
  path = str(tmp_path_factory.mktemp("qwen25-tiny"))
  make_hf_checkpoint(path, tied=True, theta=1e6, num_kv_heads=2,
                     vocab_size=qwen25_tokenizer.VOCAB_SIZE, hidden=32, layers=2, heads=4)
  for name in os.listdir(qwen_tokenizer_dir):
    shutil.copy(os.path.join(qwen_tokenizer_dir, name), path)
  return path
