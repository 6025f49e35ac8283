"""Entry point: `python -m jaxdistill.main --config countdown.py[:preset] --workdir DIR`.

--config takes a config file path or the name of a config the package ships
(`countdown.py`), from any working directory.

--mode train (default): evaluate, train with config.algo, evaluate, print base vs trained;
--mode eval: mean@k of the latest checkpoint (or the initial model);
--mode sample: print a few held-out problems with sampled answers;
--mode export --out DIR: the latest checkpoint as a Hugging Face directory (weights in the
  compute dtype, the tokenizer, the value head beside them), whatever devices and
  `parallel.fsdp` the run trained with.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdistill.errors import UsageError  # printed in one line, exit 2 (see errors.py)
# read as main.load_model_and_tokenizer by the tests and notebooks
from jaxdistill.warmstart.initial_model import load_model_and_tokenizer  # noqa: F401



def _shipped_presets() -> str:
  """'name.py: preset, preset, ...' of each config file the package ships (ml_collections
  only: cheap enough for --help)."""
  from importlib import resources
  found = []
  for entry in sorted(resources.files("jaxdistill.configs").iterdir(), key=lambda e: e.name):
    if entry.name.endswith(".py") and not entry.name.startswith("_"):
      module = importlib.import_module(f"jaxdistill.configs.{entry.name[:-3]}")
      found.append(f"{entry.name}: {', '.join(getattr(module, 'PRESETS', ()))}")
  return "; ".join(found)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"NAME.py[:preset] of a config the package ships ({_shipped_presets()}; "
    "the first preset is the default), or a path to a config file. Any field is set with "
    "--config.SECTION.FIELD=VALUE (e.g. --config.algo=cispo); every field, its default, "
    "its rule and what it means: the config file's declarations() (jaxdistill/configs/)",
    lock_config=True)
flags.DEFINE_string("workdir", None, "run directory (default runs/<preset>-<algo>)")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "export"], "what to run")
flags.DEFINE_string("out", None, "--mode export: the directory to write")
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def check_writable(workdir: str) -> None:
  """UsageError unless a file can be written in workdir. The probe file's name is unique:
  every process of a multi-host job probes the same (shared) workdir at once, and with a
  shared name one process could delete another's probe."""
  try:
    handle, probe = tempfile.mkstemp(prefix=".write_test-", dir=workdir)
    try:
      os.write(handle, b"ok")
    finally:
      os.close(handle)
      os.remove(probe)
  except OSError as e:
    raise UsageError(f"workdir {workdir!r} is not writable: {e.strerror}") from None


def _prepare_workdir(config) -> str:
  workdir = FLAGS.workdir or os.path.join("runs", f"{config.preset}-{config.algo}")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UsageError(f"cannot create workdir {workdir!r}: {e.strerror}") from None
  check_writable(workdir)
  return workdir


def _print_table(rows):
  print("\n| model | " + " | ".join(rows[0][1]) + " |")
  print("|---|" + "---|" * len(rows[0][1]))
  for name, values in rows:
    print(f"| {name} | " + " | ".join(
        f"{v:.3f}" if isinstance(v, float) else str(v) for v in values.values()) + " |")


def compilation_cache_dir(setting: str) -> str | None:
  """The persistent compilation cache directory of a `compile_cache_dir` setting: '' is the
  user cache ($XDG_CACHE_HOME or ~/.cache, then jaxdistill/xla), 'none' turns it off."""
  if setting == "none":
    return None
  if setting:
    return os.path.abspath(os.path.expanduser(setting))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxdistill", "xla")


def enable_compilation_cache(directory: str | None) -> None:
  """Keep compiled programs, and XLA's GPU autotuning and kernel caches, in `directory`.

  jax does not persist executables that contain host callbacks (a task without a device
  reward puts them in the training iteration), so those are recompiled on every start; on
  GPUs the autotune and kernel caches still skip most of that work."""
  if directory is None:
    return
  import jax
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_enable_xla_caches", "all")


def run_job(config, workdir: str, mode: str) -> dict:
  """Run one mode; returns what it measured."""
  from jaxdistill import settings
  # learner fields left None take the method's values (method_learner): from here on every
  # part of the run (the notebooks call this too), and the config.json it records, sees the
  # values it trains with
  config = settings.resolved(config)
  _start_jax(config)
  model, tokenizer, task, splits = _prepare(config, workdir)
  if mode == "train":
    return _train(config, workdir, model, tokenizer, task, splits)
  model = _restore_params(model, workdir)
  if mode == "export":
    return _export(model, tokenizer, FLAGS.out)
  if mode == "eval":
    return _evaluate(config, workdir, model, tokenizer, task, splits)
  return _sample(model, tokenizer, task, splits[2][:8], settings.evaluation(config),
                 config.task.prompt)


def _start_jax(config) -> None:
  """Join the other processes (when the environment says there are some), keep compiled
  programs, and refuse a config the devices cannot run."""
  from jaxdistill import parallel
  several = parallel.maybe_initialize_distributed()
  import jax
  # XLA:CPU's Gloo collectives give the processes 30 s to meet at a program's first
  # collective: one process loading the training program from the cache while another
  # compiles it misses that (accelerators' collectives wait far longer)
  if not (several and jax.default_backend() == "cpu"):
    enable_compilation_cache(compilation_cache_dir(config.compile_cache_dir))
  from jaxdistill import validation
  found = validation.device_problems(config, jax.device_count())
  if found:
    raise UsageError("; ".join(found))


def _prepare(config, workdir: str):
  """(model, tokenizer, task, (train, validation, test) splits): the model warm-started
  when the preset builds it locally."""
  from jaxdistill import settings, tasks
  model, tokenizer = load_model_and_tokenizer(config, workdir)
  task = tasks.from_config(config)
  # validation: held out from the warm start and RL alike (learning rates and learning
  # curves are read off it, never off the test split)
  splits = task.splits(
      config.task.data_dir or os.path.join(workdir, "data"), config.task.data_seed,
      config.task.train_size, config.task.validation_size, config.task.test_size)
  if config.sft.steps and not config.model.path:
    from jaxdistill.warmstart import sft
    model = sft.warm_start(
        model, tokenizer, task, splits[0], settings.warm_start(config),
        config.sft.cache_dir or os.path.join(workdir, "warm_start"),
        progress=config.train.progress)
  return model, tokenizer, task, splits


def _train(config, workdir: str, model, tokenizer, task, splits) -> dict:
  """--mode train: the run, then its before/after table (or the exit a signal asked for)."""
  from jaxdistill import parallel, train
  train_split, validation_split, test_split = splits
  summary = train.train(config, task, model, tokenizer, train_split, test_split, workdir,
                        validation_problems=validation_split)
  stopped = summary.get("stopped")
  if stopped:
    if parallel.is_primary():
      print(f"stopped by {stopped['signal']} after step {stopped['step']}; the checkpoint "
            f"is in {os.path.join(workdir, 'checkpoints')}: run the same command to resume")
    sys.exit(stopped["exit_code"])
  if not parallel.is_primary():
    return summary  # one process reports
  rows = [(name, summary[key]) for name, key in (
      ("before", "eval_before"), ("after", "eval_after"),  # the test problems
      ("before (validation)", "val_before"), ("after (validation)", "val_after"))
          if key in summary]
  if rows:
    _print_table(rows)
  if os.path.exists(os.path.join(workdir, "eval.png")):
    print(f"plot: {os.path.join(workdir, 'eval.png')}")
  return summary


def _evaluate(config, workdir: str, model, tokenizer, task, splits) -> dict:
  """--mode eval: mean@k / pass@k without search, or with the search section's test-time
  search (eval.test_time_search, whatever the algo)."""
  from jaxdistill import evaluate as evaluation
  from jaxdistill import parallel, settings, tokenization
  _, validation_split, test_split = splits
  if config.eval.test_time_search:
    ids = tokenization.special_ids(tokenizer)
    result = evaluation.evaluate_with_search(
        model, tokenizer, task, test_split[:config.eval.num_problems],
        settings.step_search(config, tokenizer, task.step_delimiter, model.config.vocab_size),
        settings.rollout(config, ids.eos_id, ids.pad_id),
        prompt_width=config.task.prompt_width, prompt=config.task.prompt,
        seed=settings.evaluation_seed(config),
        dense=config.reward.dense)
    print(result)
    return result
  problems = validation_split if config.eval.split == "validation" else test_split
  result = evaluation.evaluate(model, tokenizer, task, problems[:config.eval.num_problems],
                               settings.evaluation(config), seed=settings.evaluation_seed(config),
                               prompt=config.task.prompt,
                               per_problem=True)
  if parallel.is_primary():
    print({key: value for key, value in result.items() if key != "per_problem"})
    evaluation.write_result(os.path.join(workdir, "eval_result.json"), result,
                            split=config.eval.split, temperature=config.eval.temperature)
  return result


def _restore_params(model, workdir):
  """The model with the params of the latest readable checkpoint in workdir, if any
  (checkpoints none of which is readable: NoReadableCheckpoint, a UsageError)."""
  from jaxdistill.train import checkpointing
  return checkpointing.latest_model(model, workdir)


def _export(model, tokenizer, out: str) -> dict:
  """Write the model (the latest checkpoint's params) and tokenizer to `out`."""
  from jaxdistill import parallel
  from jaxdistill.models import save_pretrained
  if parallel.is_primary():
    save_pretrained(model, out)
    tokenizer.save_pretrained(out)
    print(f"exported to {out}")
  parallel.barrier("export")
  return {"out": out}


def _sample(model, tokenizer, task, problems, eval_config, prompt):
  import jax

  from jaxdistill import evaluate as evaluation
  from jaxdistill import tokenization
  from jaxdistill.sampling import generate
  ids = tokenization.special_ids(tokenizer)
  tokens, lengths = evaluation.encode_prompts(task, tokenizer, problems, prompt,
                                              eval_config.prompt_width)
  out = jax.device_get(generate(model, tokens, lengths, jax.random.PRNGKey(0),
                                max_new_tokens=eval_config.max_new_tokens,
                                temperature=eval_config.temperature, stop_ids=(ids.eos_id,),
                                pad_id=ids.pad_id))
  # the built-in task grades the final answer only (as the reference's grader does): a
  # sample marked solved may still show wrong arithmetic in its step lines
  print("[solved]: the task's sparse reward is 1; a task may grade the final answer alone, "
        "as the reference's grader does, so a solved sample's step lines are not checked")
  solved = 0
  for row, p in enumerate(problems):
    text = tokenization.decode(tokenizer, out.tokens[row], int(out.lengths[row]))
    reward = task.reward(text, p, dense=False)
    solved += reward == 1.0
    shown = ", ".join(f"{k}: {v}" for k, v in task.describe(p).items())
    print(f"{shown} [{'solved' if reward == 1.0 else 'not solved'}]\n"
          f"  {text!r}")
  return {"solved": solved, "shown": len(problems)}


def main(argv):
  """Run the job the flags describe."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if not FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from jaxdistill import validation
  found = validation.problems(config)  # the whole config, before any work
  if FLAGS.mode == "export" and not FLAGS.out:
    found.append("--mode export needs --out=DIR, the directory to write")
  if found:
    for line in found:
      print(f"error: {line}", file=sys.stderr)
    sys.exit(2)
  try:
    workdir = _prepare_workdir(config)
    run_job(config, workdir, FLAGS.mode)
  except UsageError as e:  # the config, paths and files given: one line; anything else is
    print(f"error: {e}", file=sys.stderr)  # not the user's to fix and keeps its traceback
    sys.exit(2)
  except KeyboardInterrupt:  # outside the training loop (warm start, evaluation), or twice
    print("interrupted", file=sys.stderr)
    sys.exit(130)


def packaged_configs() -> list[str]:
  """Names of the config files the package ships (jaxdistill/configs/*.py)."""
  from importlib import resources
  return sorted(entry.name for entry in resources.files("jaxdistill.configs").iterdir()
                if entry.name.endswith(".py") and not entry.name.startswith("_"))


def resolve_config_argument(value: str) -> str:
  """`--config` value with a shipped config's bare name (`countdown.py[:preset]`) replaced by
  its installed path; an existing path is kept. Raises UsageError for neither."""
  from importlib import resources
  path, colon, preset = value.partition(":")
  if os.path.exists(path):
    return value
  if os.path.dirname(path) in ("", "configs") and os.path.basename(path) in packaged_configs():
    shipped = resources.files("jaxdistill.configs") / os.path.basename(path)
    name = os.path.basename(path)
    presets = getattr(importlib.import_module(f"jaxdistill.configs.{name[:-3]}"), "PRESETS", ())
    if preset and presets and preset not in presets:
      raise UsageError(f"unknown preset {preset!r} of {name}; choose one of "
                       f"{', '.join(presets)}")
    return str(shipped) + colon + preset
  raise UsageError(f"no config file {path!r}: give a path, or one of the configs jaxdistill "
                   f"ships: {', '.join(packaged_configs())}")


def _resolve_config_flag(argv: list[str]) -> list[str]:
  """argv with its --config value resolved (see resolve_config_argument)."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      argv[i] = "--config=" + resolve_config_argument(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(argv):
      argv[i + 1] = resolve_config_argument(argv[i + 1])
  return argv


def _parse_flags(argv):
  """absl's flag parsing with a flag error (a bad value, a config file that fails to load)
  reported in one line and exit status 2, not a FATAL block."""
  try:
    return FLAGS(argv)
  except (KeyError, AttributeError) as e:  # ml_collections: an override of no field (raised
    print(f"error: {_unknown_field(e)}", file=sys.stderr)  # while parsing, so only that)
    sys.exit(2)
  except flags.Error as e:
    if isinstance(e.__context__, (KeyError, AttributeError)):
      print(f"error: {_unknown_field(e.__context__)}", file=sys.stderr)
    else:
      print(f"error: {_first_line_and_reason(e)}", file=sys.stderr)
    sys.exit(2)


def _first_line_and_reason(error: Exception) -> str:
  """A flag error's first line, with the reason ml_collections buries in a traceback below
  it ("Error whilst parsing config file:" then the config's own error, e.g. an unknown
  preset of a config given by its path)."""
  first = str(error).splitlines()[0]
  cause = error
  while cause.__context__ is not None:  # the innermost error: the config's own
    cause = cause.__context__
  reason = str(cause).strip().splitlines()
  if cause is error or not reason or not first.rstrip().endswith(":"):
    return first
  return f"{first.rstrip()} {reason[-1]}"


def _unknown_field(error: Exception) -> str:
  """'unknown config field F (did you mean G?)' of ml_collections' KeyError/AttributeError."""
  text = str(error.args[0] if error.args else error)
  name = re.search(r"(\w+)", text)
  hint = re.search(r"Did you mean \"(\w+)\"", text)
  field = name.group(1) if name else repr(text)
  return f"unknown config field {field}" + (f" (did you mean {hint.group(1)}?)" if hint else "")


def run():
  """Console-script entry point; unknown config fields are reported in one line."""
  try:
    sys.argv = _resolve_config_flag(sys.argv)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
