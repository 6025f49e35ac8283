r"""Compare training methods at an equal budget of generated tokens, from one base model.

    python -m jaxdistill.experiments.compare      # tiny preset: LR sweep, then 5 seeds each
    python -m jaxdistill.experiments.compare --preset=medium   # 4 numbers, hidden 512 (GPU)
    python -m jaxdistill.experiments.compare --preset=tiny4 --equal=updates \
        --method_learning_rates=cispo=1e-5 ...   # the reference's protocol, rates frozen

The protocol, fixed before any run:
1. Splits disjoint by content: `--test_problems` (3,000) distinct test problems,
   `--validation_problems` (1,000) validation problems, the rest of the preset's train split
   (cut to what the problem space still holds).
2. The base model (one shared warm start) is scored per seed.
3. Each method's generated tokens per iteration are measured by a 2-iteration probe, so
   that its learning rate decays to zero exactly as it reaches `--token_budget`. With
   `--equal=updates` (the reference's table, not compute-matched) every run instead makes
   the preset's train.num_iterations updates of train.prompts_per_iteration prompts, each
   method at its own per-prompt budget; those runs have workdirs of their own (`-updates`)
   and the same warm start, splits and base-model scores. Their rates can be frozen at
   the equal-token table's picks (one rate per method in `--method_learning_rates`).
4. Learning rate: the first `--pick_seeds` (2) seeds at each of `--learning_rates` (or the
   method's own grid from `--method_learning_rates`); the best final validation mean@k,
   pooled over those seeds, is frozen for the other seeds before any test number is read.
   Under the sweep table: the pick's lead over each other rate with its standard error,
   paired problem by problem, and a warning when the validation problems cannot tell the
   pick from another rate, or when the pick is an end of its grid. Test scores of rates not
   picked are never read (a run's own final evaluation of the first --reference_problems
   test problems stays in its workdir; the test evaluations are run for picked rates only).
   A rate given alone is picked already: its runs are tested as each finishes.
5. Every run: `--curve_points` evaluations on the validation split during training (the
   learning curve against generated tokens), then, no search: mean@`--test_k` (4) and
   pass@`--test_k` on every test problem at each of `--temperatures` (the primary score, with
   each problem's score kept), and the reference's metric, mean@16 and pass@16 on the first
   `--reference_problems` (820), at the preset's evaluation temperature.
6. Differences are paired by seed, with the standard error over seeds and the unbiased
   two-way one that also counts the sampling of the test problems; a difference counts when
   it exceeds twice the larger, whichever method leads. The verdict (`report.verdict`)
   names each difference with cispo or the base model that counts, or says none with cispo
   does.
Stopping it (SIGTERM or Ctrl-C) lets the running job write a checkpoint; the same command
then resumes the comparison where it stopped. Draining it (SIGUSR1 to this process) lets the
running jobs finish, and the test evaluations that follow them, starts no training job and
then exits: nothing is left half trained (a checkpoint does not travel with the records).
Writes a markdown table with per-seed numbers and the paired difference of each method to
cispo and to the base model (mean and standard error over seeds) and the verdict, the raw
numbers (JSON) and a plot of the learning curves (PNG). Every run is a `jaxdistill.main`
job in `WORKDIR/<name>`, resumable: finished runs are read back, not repeated. A picked run
whose checkpoint is gone (records travel between machines in git, checkpoints do not) is
scored from its cached test evaluations or else trained again in `WORKDIR/<name>-again`;
the record its rate was picked on is never touched.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from jaxdistill.experiments import evaluations, settings, training_runs
from jaxdistill.experiments.jobs import Pool, check_stopped
from jaxdistill.experiments.report import markdown, plot, summarize, verdict
from jaxdistill.experiments.sweep import method_grids, pick_rate, sweep_table


def define_flags():
  """Command-line flags (defined only when run as a program: importing this module for
  its functions must not clash with the flags of other absl programs)."""
  flags.DEFINE_string("preset", "tiny", "config preset (countdown.py)")
  flags.DEFINE_list("methods", ["base", "mcts_distill", "mcts_tree", "cispo", "best_of_n"],
                    f"base and training methods ({', '.join(training_runs.METHODS)})")
  flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "RL seeds (the base model is the "
                    "same for all)")
  flags.DEFINE_integer("pick_seeds", 2, "the first seeds that try every learning rate; the "
                       "rate is picked on their pooled validation score")
  flags.DEFINE_list("learning_rates", ["1e-5", "3e-5", "1e-4"], "learning rates tried on the "
                    "first --pick_seeds seeds (one value: no sweep)")
  flags.DEFINE_integer("test_problems", 3000, "distinct test problems (the primary score)")
  flags.DEFINE_integer("test_k", 4, "samples per test problem of the primary score (mean@k's "
                       "expectation does not depend on k: more problems shrink its largest "
                       "error term)")
  flags.DEFINE_integer("reference_problems", 820, "the first test problems scored with the "
                       "reference's mean@16 / pass@16 (the preset's eval.k)")
  flags.DEFINE_integer("validation_problems", 1000, "distinct validation problems")
  flags.DEFINE_multi_string("method_learning_rates", [], "a method's own grid in place of "
                            "--learning_rates, e.g. mcts_distill=3e-6,1e-5,3e-5 (repeat the "
                            "flag for more methods), for a method whose best rate lies outside "
                            "the common grid")
  flags.DEFINE_enum("equal", "tokens", ["tokens", "updates"], "what every training run gets "
                    "the same of: generated tokens (`--token_budget`), or the reference's own "
                    "protocol, the preset's prompts and updates (train.num_iterations x "
                    "train.prompts_per_iteration), each method at its natural per-prompt "
                    "budget and its tokens reported; a run of one is never reused by the other")
  flags.DEFINE_integer("token_budget", 0, "generated tokens per training run; 0: what the "
                       "preset's own mcts_distill run samples (1,422,558 on tiny, measured; "
                       "other presets: its 2-iteration probe's tokens per iteration x "
                       "train.num_iterations)")
  flags.DEFINE_integer("curve_points", 5, "validation evaluations during each run")
  flags.DEFINE_list("temperatures", ["0.2", "0.8"], "evaluation temperatures (first: the "
                    "one learning rates are picked at)")
  flags.DEFINE_integer("eval_key_sets", 1, "independent sets of k samples per test problem at "
                       "the first temperature (mean@k pooled over them: mean@(k * sets)); more "
                       "sets shrink the evaluation noise in the paired differences")
  flags.DEFINE_integer("jobs", 1, "jobs run side by side, each pinned to a CPU core of its "
                       "own (Linux; 1: one job at a time, free to use every core). A job on "
                       "one core computes in one thread, which moves a run's numbers in the "
                       "last bits: keep one setting for the whole of a comparison")
  flags.DEFINE_bool("status", False, "print how far the protocol's runs are, from the records "
                    "in --workdir (no job is run, no test score read), and exit")
  flags.DEFINE_string("keep_records", "", "copy --workdir's records (each finished run's JSON "
                      "and JSONL files, the base model's and the probes' evaluations, the warm "
                      "start) into this folder and exit, running nothing: what a comparison "
                      "needs to go on on another machine, from them copied into its workdir")
  flags.DEFINE_string("workdir", "runs/compare", "where runs go")
  flags.DEFINE_string("out", "", "markdown table (JSON and PNG beside); '' -> "
                      "results/<task>_<preset>.md")
  flags.DEFINE_multi_string("set", [], "extra config overrides for every run, e.g. "
                            "--set=search.num_agents=8")


def split_overrides() -> list[str]:
  """The protocol's splits: --test_problems and --validation_problems distinct problems, the
  preset's train size cut to what the task's problem space still holds."""
  FLAGS = settings.FLAGS
  from jaxdistill import tasks
  config = settings.config()
  train = config.task.train_size
  capacity = tasks.from_config(config).capacity()
  if capacity is not None:
    train = min(train, capacity - FLAGS.test_problems - FLAGS.validation_problems)
    if train < 1:
      raise app.UsageError(f"{FLAGS.test_problems} test and {FLAGS.validation_problems} validation "
                       f"problems leave no training problems of the {capacity} the task has")
    if train < config.task.train_size:
      print(f"train split: {train:,} problems (the preset's {config.task.train_size:,} do not "
            f"fit beside {FLAGS.test_problems:,} test and {FLAGS.validation_problems:,} "
            "validation problems)", flush=True)
  return [f"task.test_size={FLAGS.test_problems}",
          f"task.validation_size={FLAGS.validation_problems}", f"task.train_size={train}"]


def _header(grids: dict[str, list[str]], problems: int, pickers: list[int], k: int) -> str:
  """The table's first paragraph: the protocol the runs followed, from the flags."""
  FLAGS = settings.FLAGS
  test_k = FLAGS.test_k
  config = settings.config()
  budget = (f"every training run samples {FLAGS.token_budget:,} tokens" if FLAGS.equal == "tokens"
            else f"the reference's protocol, not compute-matched: every training run gets the "
                 f"same {config.train.num_iterations} updates of "
                 f"{config.train.prompts_per_iteration} prompts, each method at its natural "
                 f"per-prompt budget (its tokens in the table)")
  if all(len(g) == 1 for g in grids.values()):  # e.g. frozen at another table's picks
    rates = ("learning rate per method given, not picked here ("
             + ", ".join(f"{m}: {g[0]}" for m, g in grids.items())
             + f"; its validation mean@{k} on {FLAGS.validation_problems:,} problems, seeds "
             f"{', '.join(map(str, pickers))} pooled, under the table)")
  else:
    rates = (f"learning rate per method picked on seeds {', '.join(map(str, pickers))} "
             f"pooled, from {', '.join(FLAGS.learning_rates)}"
             + "".join(f" ({m}: {', '.join(g)})" for m, g in grids.items()
                       if g != list(FLAGS.learning_rates))
             + f" by validation mean@{k} on {FLAGS.validation_problems:,} problems")
  return (f"{settings.task_name().capitalize()}, preset `{FLAGS.preset}`, {budget}, "
          f"from the same warm-started base model; test "
          f"mean@{test_k} on {problems:,} distinct held-out problems (and the reference's "
          f"mean@{k} / pass@{k} on the first {FLAGS.reference_problems}), no search at "
          f"evaluation; {rates}, frozen before "
          f"any test score; differences are paired by seed (mean ± standard error over "
          f"seeds, the test problems held fixed"
          + (f"; 'with problems': the unbiased two-way standard error that also counts the "
             f"sampling of the {problems:,} test problems, from one set of {test_k} samples "
             f"per problem and run" if problems else "")
          + "); a difference is flagged past twice the larger, whichever method leads."
          + (f" At T={FLAGS.temperatures[0]} each run is scored on {FLAGS.eval_key_sets} "
             f"independent sets of {test_k} samples per problem: mean@{test_k} and "
             f"pass@{test_k} are averaged over the sets (mean@{test_k * FLAGS.eval_key_sets})."
             if FLAGS.eval_key_sets > 1 else "")
          + (f" Overrides: {', '.join(f'`{o}`' for o in FLAGS.set)}." if FLAGS.set else ""))


def main(argv):
  del argv
  FLAGS = settings.FLAGS
  k = settings.eval_k()
  unknown = set(FLAGS.methods) - {"base", *training_runs.METHODS}
  if unknown:
    raise app.UsageError(f"unknown methods {sorted(unknown)}; choose from base, "
                         f"{', '.join(training_runs.METHODS)}")
  if FLAGS.eval_key_sets < 1:
    raise app.UsageError(f"--eval_key_sets must be at least 1, got {FLAGS.eval_key_sets}")
  stride = evaluations.KEY_SET_STRIDE
  if FLAGS.eval_key_sets > 1 and (any(o.startswith("seed=") for o in FLAGS.set)
                                  or any(int(s) >= stride for s in FLAGS.seeds)):
    raise app.UsageError(f"--eval_key_sets draws evaluation seeds seed + {stride} r: "
                         f"give seeds below {stride} with --seeds, not --set=seed=")
  if FLAGS.jobs < 1:
    raise app.UsageError(f"--jobs must be at least 1, got {FLAGS.jobs}")
  if not 1 <= FLAGS.pick_seeds <= len(FLAGS.seeds):
    raise app.UsageError(f"--pick_seeds must be in [1, {len(FLAGS.seeds)}] (the number of "
                         f"--seeds), got {FLAGS.pick_seeds}")
  seeds = [int(s) for s in FLAGS.seeds]
  grids = method_grids(FLAGS.methods, FLAGS.learning_rates, FLAGS.method_learning_rates)
  finished, total, lines = training_runs.progress(FLAGS.methods, grids, seeds)
  print("\n".join([f"{FLAGS.workdir}: {finished} of {total} training runs finished"] + lines),
        flush=True)
  if FLAGS.status:
    return
  if FLAGS.keep_records:
    kept = training_runs.keep_records(FLAGS.workdir, FLAGS.keep_records)
    print(f"{FLAGS.keep_records}: the records of {len(kept)} folders of {FLAGS.workdir}",
          flush=True)
    return

  os.makedirs(FLAGS.workdir, exist_ok=True)
  common = [f"sft.cache_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'warm_start'))}",
            f"task.data_dir={os.path.abspath(os.path.join(FLAGS.workdir, 'data'))}",
            "train.progress=False", *split_overrides()]
  if FLAGS.token_budget < 0:
    raise app.UsageError(f"--token_budget must be >= 0, got {FLAGS.token_budget}")
  pool = Pool(FLAGS.jobs)
  try:
    records, sweep, sweep_runs, notes = _protocol(pool, common, seeds, grids, k)
  finally:
    pool.close()
  _write(records, sweep, sweep_runs, notes, seeds, grids, k)


def _protocol(pool: Pool, common: list[str], seeds: list[int], grids: dict[str, list[str]],
              k: int) -> tuple[list[dict], dict, list[dict], list[str]]:
  """Every run of the protocol, side by side on the pool where they do not wait on each
  other: (the records with test scores, each method's picked rate, the sweep's rows, the
  notes under its table)."""
  FLAGS = settings.FLAGS
  if FLAGS.jobs > 1:  # the splits and the warm start every job reads, written by one job
    evaluations.run_job(os.path.join(FLAGS.workdir, "prepare"),
                        common + ["seed=0", "eval.num_problems=1", "eval.k=1"], mode="eval")
  if FLAGS.equal == "updates":
    FLAGS.token_budget = 0  # each method's own tokens: a column of the table
  elif not FLAGS.token_budget:
    FLAGS.token_budget = training_runs.default_budget(common)
    print(f"token budget: {FLAGS.token_budget:,} generated tokens per training run", flush=True)

  def run(method, seed, lr, sweep=False):
    """train_run, announced with how far the protocol is when it is not finished yet."""
    if training_runs.record_of(method, seed, lr) is None:
      check_stopped(training=True)  # after a drain: not announced
      done, total, _ = training_runs.progress(FLAGS.methods, grids, seeds)
      print(f"training run: {method}, lr {lr}, seed {seed} ({done} of {total} finished)",
            flush=True)
    return training_runs.train_run(method, seed, lr, common, sweep=sweep)

  def run_and_test(method, seed, lr):
    return training_runs.with_test(run(method, seed, lr), common)

  # Jobs that do not wait on each other go to the pool at once: the probes, then the base
  # model's scores and every method's sweep; a method's other seeds and its test scores
  # follow its pick, which needs its whole sweep (its picked runs' test scores go first).
  trained = [m for m in FLAGS.methods if m != "base"]
  pickers, others = seeds[:FLAGS.pick_seeds], seeds[FLAGS.pick_seeds:]
  sweep, sweep_runs, notes, tested = {}, [], [], {}
  if FLAGS.equal == "tokens":
    for probe in [pool.submit(training_runs.tokens_per_iteration, m, common) for m in trained]:
      pool.result(probe)

  def pick_and_test(method, runs):
    """The method's pick from its finished sweep, and its test jobs queued: the picked runs'
    first in the queue, scored while this machine still has their checkpoints, which do not
    travel between machines (else they are trained again)."""
    tried = {lr: [f.result() for f in futures] for lr, futures in runs.items()}
    best_lr, rate_rows, method_notes = pick_rate(method, grids[method], tried, k, pickers)
    return best_lr, rate_rows, method_notes, (
        [pool.submit(training_runs.with_test, r, common, priority=-1) for r in tried[best_lr]]
        + [pool.submit(run_and_test, method, seed, best_lr) for seed in others])

  with pool.held():  # each pick in place before a sweep's (recorded) runs can finish
    base = ([pool.submit(evaluations.base_run, seed, common) for seed in seeds]
            if "base" in FLAGS.methods else [])
    # a rate given alone is picked already: its runs are tested as they finish, while their
    # checkpoints are here (a drained comparison leaves none untested to train again)
    sweeps = {m: {lr: [pool.submit(run, m, seed, lr, True) if len(grids[m]) > 1
                       else pool.submit(run_and_test, m, seed, lr) for seed in pickers]
                  for lr in grids[m]} for m in trained}
    # picked by the worker that finishes a sweep's last run, before it takes the next one
    picks = {m: pool.after([f for futures in sweeps[m].values() for f in futures],
                           pick_and_test, m, sweeps[m]) for m in trained}
  for method in trained:
    best_lr, rate_rows, method_notes, tested[method] = pool.result(picks[method])
    sweep[method] = f"{float(best_lr):g}"
    sweep_runs += rate_rows
    notes += method_notes
  records = ([pool.result(f) for f in base]
             + [pool.result(f) for method in trained for f in tested[method]])
  for r in records:
    again = r.get("trained_again")
    if again:
      notes.append(
          f"{r['method']} seed {r['seed']} (lr {r['lr']:g}): its checkpoint did not travel "
          "with its record; trained again for its test scores, " + (
              "it repeated itself." if again["repeated"] else
              f"on another machine: validation {100 * again['first_validation']:.1f}% -> "
              f"{100 * r['validation']:.1f}%, generated tokens "
              f"{again['first_generated_tokens']:,} -> {r['generated_tokens']:,}; its row is "
              "the second run's (the pick stays the first's)."))
  return records, sweep, sweep_runs, notes


def _write(records: list[dict], sweep: dict, sweep_runs: list[dict], notes: list[str],
           seeds: list[int], grids: dict[str, list[str]], k: int) -> None:
  """The table (markdown), the raw numbers (JSON) and the learning curves (PNG)."""
  FLAGS = settings.FLAGS
  rows = summarize(records, FLAGS.test_k, FLAGS.temperatures)
  problems = len(records[0]["test"]["per_problem"]) if records else 0
  test_k, pickers = FLAGS.test_k, seeds[:FLAGS.pick_seeds]
  header = _header(grids, problems, pickers, k)
  table = markdown(rows, test_k, header, FLAGS.temperatures)
  decided = verdict(rows)
  table += f"\n**Verdict** (a paired difference counts past 2 SE): {decided['summary']}\n"
  table += sweep_table(grids, sweep_runs, k, pickers, notes)
  out = FLAGS.out or os.path.join("results", f"{settings.task_name()}_{FLAGS.preset}.md")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    f.write(table)
  stem = os.path.splitext(out)[0]
  with open(stem + ".json", "w") as f:
    # each run's per-problem test scores stay (runs[].test.per_problem, the split's order)
    runs = [{key: value for key, value in r.items()
             if key not in ("validation_per_problem", "lr_text", "final_test")}
            for r in records]
    json.dump({"equal": FLAGS.equal, "budget": FLAGS.token_budget, "verdict": decided,
               "rows": rows, "runs": runs,
               "sweep": sweep, "sweep_runs": sweep_runs, "grids": grids,
               "methods": {m: training_runs.METHODS[m] for m in sweep},
               "overrides": FLAGS.set}, f, indent=1)
  plot(records, sweep, k, str(settings.eval_temperature()), stem + ".png",
       min(settings.config().eval.curve_problems, FLAGS.validation_problems))
  print(table)
  print(f"wrote {out}, {stem}.json, {stem}.png")


if __name__ == "__main__":
  define_flags()
  app.run(main)
