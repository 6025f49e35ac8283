"""How strong a warm start makes the base model: mean@k of the warm-started model on the test
split for each of several warm-start lengths (the base model of a preset is meant to solve a
minority of the problems; the reference's instruct model solved 3.1% of 4-number problems).

    python -m jaxdistill.experiments.calibrate --preset=tiny4 --steps=400,800,1600

Each length is its own warm start (its own learning-rate schedule), cached in
DIR/ws-<steps> like a run's; the table and JSON give mean@k and pass@k at the preset's
evaluation settings on the first --problems test problems, and the warm start's seconds.
"""

from __future__ import annotations

import os
import time

from absl import app, flags


def define_flags():
  """The command's flags, defined only when it runs (its functions may be imported beside
  other commands' flags, such as jaxdistill.main's --out)."""
  flags.DEFINE_string("preset", "tiny4", "config preset (countdown.py)")
  flags.DEFINE_list("steps", ["400", "800", "1600"], "warm-start lengths to try")
  flags.DEFINE_integer("problems", 256, "test problems scored")
  flags.DEFINE_multi_string("set", [], "config overrides, e.g. --set=model.hidden_size=192")
  flags.DEFINE_string("dir", "runs/calibrate", "where warm starts and splits go (not --workdir: "
                      "jaxdistill.main, imported to build the model, defines that flag)")
  flags.DEFINE_string("out", "results/calibrate_tiny4.json", "JSON output")


FLAGS = flags.FLAGS


def measure(config, steps: int, workdir: str, problems: int) -> dict:
  """One row: the base model after `steps` warm-start steps, scored on the test split."""
  from jaxdistill import evaluate, settings, tasks
  from jaxdistill.warmstart import sft
  from jaxdistill.warmstart.initial_model import load_model_and_tokenizer
  config = config.copy_and_resolve_references()
  config.sft.steps = steps
  task = tasks.from_config(config)
  model, tokenizer = load_model_and_tokenizer(config, workdir)
  train, _, test = task.splits(os.path.join(workdir, "data"), config.task.data_seed,
                               config.task.train_size, config.task.validation_size,
                               config.task.test_size)
  started = time.perf_counter()
  model = sft.warm_start(model, tokenizer, task, train, settings.warm_start(config),
                         os.path.join(workdir, f"ws-{steps}"), progress=False)
  seconds = time.perf_counter() - started
  result = evaluate.evaluate(model, tokenizer, task, test[:problems],
                             settings.evaluation(config), seed=settings.evaluation_seed(config),
                             prompt=config.task.prompt)
  return {"steps": steps, "warm_start_s": seconds} | result


def main(argv):
  del argv
  from jaxdistill.bench.common import print_table
  from jaxdistill.configs import countdown as presets
  from jaxdistill.files import write_json
  config = presets.apply_overrides(presets.get_config(FLAGS.preset), FLAGS.set)
  rows = []
  for steps in map(int, FLAGS.steps):
    rows.append(measure(config, steps, FLAGS.dir, FLAGS.problems))
    print_table(rows[-1:], list(rows[-1]))
  print(f"\n{FLAGS.preset} {' '.join(FLAGS.set)}: base model by warm-start length")
  print_table(rows, list(rows[0]))
  write_json(FLAGS.out, {"preset": FLAGS.preset, "overrides": FLAGS.set, "rows": rows})


if __name__ == "__main__":
  define_flags()
  app.run(main)
