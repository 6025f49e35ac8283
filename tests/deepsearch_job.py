"""A DeepSearch training job for the resume test in test_deepsearch.py (run as a program, so
that it can be killed): Countdown prompts with a verifier that accepts about a third of all
completions (by their characters), so that a random model fills the replay buffer, and 8
training problems, so that every round meets the same ones again (replayed).

    python tests/deepsearch_job.py WORKDIR ITERATIONS
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdistill.tasks import countdown  # noqa: E402


class Lenient(countdown.Countdown):
  def reward(self, completion, problem, dense):
    return float(sum(map(ord, completion)) % 3 == 0)

  def device_reward(self, tokenizer, dense):
    # the same grade inside the program, so the job's programs have no host callback and
    # the compilation cache serves its second and third start (the resume test's cost)
    return LenientOnDevice(tokenizer)


class LenientOnDevice:
  """Lenient's reward of token rows (-1 outside the completion): the character codes of a
  completion sum to those of its tokens' texts (the character tokenizer's decoder joins
  them), so a table of each token's sum grades it."""

  def __init__(self, tokenizer):
    from jaxdistill import tokenization
    self.codes = np.asarray([sum(map(ord, tokenization.decode(tokenizer, [i])))
                             for i in range(len(tokenizer))], np.int32)

  def tables(self, problems):
    del problems  # the grade reads no problem
    return self.codes

  def __call__(self, tables, tokens, problems):
    import jax.numpy as jnp
    del problems
    total = jnp.where(tokens >= 0, jnp.asarray(tables)[jnp.maximum(tokens, 0)], 0).sum(-1)
    return (total % 3 == 0).astype(jnp.float32)


def config(iterations: int):
  from jaxdistill.configs import countdown as presets
  return presets.apply_overrides(presets.get_config("smoke"), [
      "algo=deepsearch", "model.hidden_size=32", "model.intermediate_size=64",
      "model.num_hidden_layers=2", "search.max_step_tokens=8", "search.max_path_tokens=72",
      "sft.steps=0", "task.train_size=8", "task.test_size=8", "task.validation_size=0",
      "train.prompts_per_iteration=4", f"train.num_iterations={iterations}",
      "train.checkpoint_every=1", "train.progress=False", "eval.every=0",
      "eval.at_start=False", "learner.learning_rate=1e-3", "deepsearch.trajectories=3",
      "deepsearch.expansions=3", "deepsearch.round_iterations=2", "deepsearch.filter_pool=8",
      "deepsearch.filter_k=2", "deepsearch.filter_threshold=1.0",
      "method_learner.deepsearch.minibatches=4"])  # 4 prompts x 3 rows, split in 4


def run(workdir: str, iterations: int) -> None:
  import jax

  from jaxdistill import main, train
  main.enable_compilation_cache(main.compilation_cache_dir(""))
  settings = config(iterations)
  model, tokenizer = main.load_model_and_tokenizer(settings, workdir)
  train_split, _, test_split = Lenient(3).splits(os.path.join(workdir, "data"), 0, 8, 0, 8)
  summary = train.train(settings, Lenient(3), model, tokenizer, train_split, test_split,
                        workdir)
  leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(summary["params"]))]
  np.savez(os.path.join(workdir, "final.npz"), *leaves,
           **{f"schedule_{k}": np.asarray(v) for k, v in summary["schedule"].items()})


if __name__ == "__main__":
  run(sys.argv[1], int(sys.argv[2]))
