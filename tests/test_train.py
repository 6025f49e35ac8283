"""The training program: compile once, exact resume after kill -9, clear errors, sanity."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from settings_for_tests import learner_config
import xla_env
from jaxdistill.configs import countdown as presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.hidden_size=32", "--config.model.intermediate_size=64",
        "--config.model.num_hidden_layers=2", "--config.search.num_iterations=2",
        "--config.search.num_agents=2", "--config.search.max_step_tokens=8",
        "--config.search.max_path_tokens=72", "--config.rollout.max_completion_tokens=16",
        "--config.task.train_size=200", "--config.task.test_size=16",
        "--config.task.validation_size=16",
        "--config.train.prompts_per_iteration=8", "--config.eval.at_start=False",
        "--config.eval.every=0", "--config.train.progress=False", "--config.learner.learning_rate=1e-3",
        "--config.sft.steps=0", "--config.learner.decay_steps=8"]
# learner.decay_steps fixed: by default the rate decays over train.num_iterations, a constant
# of the compiled update, so runs of these settings with other iteration counts (and resumes
# with more iterations) would each compile the training program again instead of sharing it
# through the compilation cache


def _config(**overrides):
  config = presets.apply_overrides(presets.get_config("smoke"),
                                   [f[len("--config."):] for f in TINY])
  for key, value in overrides.items():
    section, field = key.split("__")
    config[section][field] = value
  return config


def _main(workdir, *extra, check=True, **kwargs):
  cmd = [sys.executable, "-m", "jaxdistill.main", "--config", "configs/countdown.py:smoke",
         f"--workdir={workdir}", *TINY, *extra]
  env = xla_env.env(1)
  if kwargs.get("popen"):
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if check:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


@pytest.mark.parametrize("algo,search", [
    ("mcts_distill", {}), ("cispo", {}), ("best_of_n", {}),
    ("mcts_distill", dict(search__targets="tree", search__rollout_to_end=True,
                          search__dedup_children=True, search__tree_rows=6)),
    ("mcts_distill", dict(search__targets="visits", search__rollout_to_end=True,
                          search__branch_at="entropy", search__tree_rows=8)),
    ("deepsearch", dict(deepsearch__trajectories=3, deepsearch__expansions=4,
                        learner__minibatches=3))])  # 1 prompt x 3 rows per device
def test_iterations_compile_once_on_eight_devices(tmp_path, algo, search):
  """Each method (and tree / visits targets, with rollouts and entropy branching: a static
  number of rows per tree) runs 3 iterations on 8 devices with one compiled program."""
  from jaxdistill import main, train
  from jaxdistill.tasks import countdown
  overrides = dict(train__num_iterations=3, train__checkpoint_every=3, rollout__group_size=2,
                   rollout__best_of=2, **search)
  config = _config(**overrides)
  config.algo = algo
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  train_split, test_split = countdown.make_splits(0, 200, 16, count=config.task.numbers)
  summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                        train_split, test_split, str(tmp_path))
  assert summary["compiles"] == 1  # the iteration function was compiled once for 3 calls
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for row in rows:
    assert np.isfinite(row["loss"]) and -1.0 <= row["reward"] <= 1.0
    assert row["generated_tokens"] > 0 and 0.0 <= row["solved"] <= 1.0
    # static compute of the iteration; sampled tokens are a part of what the LM ran on
    assert row["forward_tokens"] >= row["generated_tokens"] and row["forward_flops"] > 0
  assert len(jax.devices()) == 8


# the search method, whose rollout phase is the largest program (cispo's phases are the same
# learner and assembly around a plain sampler)
@pytest.mark.parametrize("algo", ["mcts_distill"])
def test_phase_timing_runs_the_same_iteration_as_three_programs(tmp_path, algo):
  """train.phase_timing splits the iteration into rollout, assembly and update programs:
  the same metrics and parameters as the fused program, plus each phase's seconds and
  FLOP/s, on 8 devices."""
  from jaxdistill import main, train
  from jaxdistill.tasks import countdown
  train_split, test_split = countdown.make_splits(0, 200, 16, count=3)
  results = {}
  for timed in (False, True):
    config = _config(train__num_iterations=2, train__checkpoint_every=2, rollout__group_size=2,
                     train__phase_timing=timed)
    config.algo = algo
    workdir = tmp_path / str(timed)
    model, tokenizer = main.load_model_and_tokenizer(config, str(workdir))
    summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                          train_split, test_split, str(workdir))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    results[timed] = (summary["params"], rows)
  for fused, timed in zip(results[False][1], results[True][1]):
    for key in ("reward", "solved", "generated_tokens", "completion_tokens"):
      assert fused[key] == timed[key], key
    np.testing.assert_allclose(timed["loss"], fused["loss"], rtol=1e-5)
    for phase in ("rollout", "assemble", "update"):
      assert timed[f"phase_s/{phase}"] > 0 and timed[f"phase_flop_per_s/{phase}"] > 0
    assert timed["rollout_tokens_per_s"] > 0 and "phase_s/rollout" not in fused
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                       atol=1e-6),
               results[False][0], results[True][0])


@pytest.mark.parametrize("algo,overrides", [
    ("mcts_distill", dict(search__targets="tree", search__rollout_to_end=True,
                          search__tree_rows=6)),
    # its own learner (PPO, clip-higher, dual clip, token-mean, no value loss) in 2 of the
    # same minibatches on 1 device and on 8 (1 prompt x 6 rows each)
    ("deepsearch", dict(deepsearch__trajectories=6, deepsearch__expansions=3,
                        learner__minibatches=2))])
def test_tree_rows_train_the_same_params_on_one_and_eight_devices(tmp_path, algo, overrides):
  """Tree targets and DeepSearch's harvest leave a different number of valid rows on each
  device; with the loss normalised over all devices, 2 iterations on 1 device and on 8 give
  the same parameters. (The rate is small so that Adam's step, lr * g / (|g| + eps), cannot
  turn fp32 reduction-order noise in a near-zero gradient into a visible share of a
  weight.)"""
  from jaxdistill import main, parallel, train
  from jaxdistill.tasks import countdown
  config = _config(train__num_iterations=2, train__checkpoint_every=2,
                   learner__learning_rate=1e-6, **overrides)
  config.algo = algo
  train_split, test_split = countdown.make_splits(0, 200, 16, count=config.task.numbers)
  results = {}
  for devices in (1, 8):
    workdir = tmp_path / str(devices)
    model, tokenizer = main.load_model_and_tokenizer(config, str(workdir))
    summary = train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer,
                          train_split, test_split, str(workdir),
                          mesh=parallel.make_mesh(devices))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    results[devices] = (jax.device_get(summary["params"]), rows)
  for one, eight in zip(results[1][1], results[8][1]):
    for key in ("reward", "trajectories", "generated_tokens"):
      assert one[key] == eight[key], key
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
  assert results[1][1][0]["trajectories"] < 8 * 6  # some rows held no trajectory
  # every parameter to rtol 1e-5 but the key projections' biases: their gradient is exactly
  # 0 in exact arithmetic (softmax ignores what is added to every score of a query), so what
  # Adam makes of them is fp32 rounding noise normalised to up to one step (lr), and noise
  # depends on the reduction order; nothing about the update can be read off them
  one, eight = (jax.tree_util.tree_flatten_with_path(results[n][0])[0] for n in (1, 8))
  steps = 2 * (config.learner.minibatches or 1)  # 2 iterations x the minibatches of each
  compared = 0
  for (path, a), (_, b) in zip(one, eight):
    name = jax.tree_util.keystr(path)
    if "k_proj" in name and "bias" in name:
      assert np.abs(np.asarray(a)).max() <= steps * 1e-6 * 1.01  # a step of lr per update
      continue
    # rtol 1e-5 of the value, or of the Adam steps (each at most lr) that made it: a weight
    # whose steps nearly cancel (a bias that starts at 0) is a small difference of
    # step-sized numbers, whose rounding is relative to the steps, not to it
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                               atol=1e-5 * steps * 1e-6, err_msg=name)
    compared += 1
  assert compared > 10


def _final_params(workdir):
  from flax import nnx

  from jaxdistill import main
  from jaxdistill.train.checkpointing import Checkpointer
  from jaxdistill.rl import learner
  config = _config()
  model, _ = main.load_model_and_tokenizer(config, str(workdir))
  _, params = nnx.split(model)
  state = learner.init_state(params, learner.make_optimizer(learner_config()),
                             jax.random.PRNGKey(0))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  step, state, position, _ = checkpointer.restore_latest(state)
  return step, jax.tree.leaves(state.params), position


# eval.at_start with eval.every=0: no evaluation at all (not a lone "before" row)
SIGNAL_RUN = ["--config.train.num_iterations=8", "--config.train.checkpoint_every=100",
              "--config.eval.at_start=True"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The run that the interrupted ones must reproduce (no checkpoint before the end)."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _main(workdir, *SIGNAL_RUN)
  with open(workdir / "metrics.jsonl") as f:
    assert not [key for line in f for key in json.loads(line) if key.startswith("eval_")]
  # the run wrote its three splits: the configured sizes, distinct, disjoint
  from jaxdistill.tasks import countdown
  splits = [countdown.read_jsonl(workdir / "data" / f"{name}.jsonl")
            for name in ("train", "validation", "test")]
  assert [len(split) for split in splits] == [200, 16, 16]
  keys = [p.key() for split in splits for p in split]
  assert len(set(keys)) == len(keys)
  return workdir


def _rows(workdir):
  return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
          for line in open(workdir / "metrics.jsonl")]


def _checkpoints(workdir):
  return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def _wait_for(condition, process, seconds=300):
  deadline = time.time() + seconds
  while not condition() and time.time() < deadline and process.poll() is None:
    time.sleep(0.05)


def test_every_interruption_resumes_exactly(uninterrupted, tmp_path):
  """One job stopped four ways, each time restarted with the same command: SIGTERM
  (preemption) and then Ctrl-C between checkpoints (the run finishes its iteration, saves
  it, says where it stopped, exits 0 / 130), then kill -9 after a checkpoint (written every
  iteration from here on: that changes nothing), then its latest checkpoint corrupted (the
  next start warns and falls back to the one before). The job ends with the parameters and
  metrics rows of a run that was never interrupted."""
  run, metrics, step = tmp_path / "run", tmp_path / "run" / "metrics.jsonl", 0
  for signum, exit_code in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
    process = _main(run, *SIGNAL_RUN, popen=True)
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > step,
              process)
    process.send_signal(signum)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == exit_code, output[-2000:]
    if step:
      assert f"resumed from checkpoint {step}" in output, output[-2000:]
    stopped = [line for line in output.splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1 and signal.Signals(signum).name in stopped[0], output[-2000:]
    previous, step = step, int(stopped[0].split("after step ")[1].split(";")[0])
    assert previous < step < 6, "the run must stop between checkpoints, well before its end"
    assert _checkpoints(run) == ([previous] if previous else []) + [step]

  every = SIGNAL_RUN + ["--config.train.checkpoint_every=1"]
  process = _main(run, *every, popen=True)
  _wait_for(lambda: os.path.isdir(run / "checkpoints" / str(step + 1)), process)
  process.send_signal(signal.SIGKILL)  # kill -9 somewhere after checkpoint step + 1
  process.wait()
  assert process.returncode == -signal.SIGKILL
  saved = _checkpoints(run)
  assert step + 1 <= saved[-1] < 8, "the run finished before it was killed; the test proved nothing"

  for root, _, files in os.walk(run / "checkpoints" / str(saved[-1])):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  out = _main(run, *every).stdout
  assert "unreadable" in out and f"resumed from checkpoint {saved[-2]}" in out, out[-2000:]

  final = [_final_params(d) for d in (uninterrupted, run)]
  assert final[0][0] == final[1][0] == 8 and final[0][2] == final[1][2] == 64
  for a, b in zip(final[0][1], final[1][1]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _rows(uninterrupted) == _rows(run)


@pytest.mark.parametrize("args,message", [
    (["--config", "configs/countdown.py:qwen2.5-1.5b"], "needs --config.model.path"),
    (["--config.search.num_agentz=3"], "unknown config field num_agentz (did you mean"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
  cmd = [sys.executable, "-m", "jaxdistill.main", f"--workdir={tmp_path}"]
  if args[0] != "--config":
    cmd += ["--config", "configs/countdown.py:smoke"]
  result = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 2
  assert message in result.stderr and "Traceback" not in result.stderr


def test_prompts_that_do_not_split_over_devices_are_refused(tmp_path):
  from jaxdistill import main, train
  from jaxdistill.tasks import countdown
  config = _config(train__prompts_per_iteration=3)
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  train_split, test_split = countdown.make_splits(0, 200, 16, count=config.task.numbers)
  from jaxdistill.errors import UsageError
  with pytest.raises(UsageError, match="prompts_per_iteration=3 does not split over 8 devices"):
    train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer, train_split,
                test_split, str(tmp_path))


def test_unwritable_workdir(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  if os.access(locked, os.W_OK):  # root ignores permissions
    locked = "/proc/jaxdistill-cannot-write-here"
  result = _main(locked, check=False)
  assert result.returncode == 2 and "workdir" in result.stderr and "Traceback" not in result.stderr


def test_non_finite_loss_never_reaches_a_checkpoint(tmp_path):
  from jaxdistill import main, train
  from jaxdistill.tasks import countdown
  config = _config(train__num_iterations=2, train__checkpoint_every=1,
                   learner__learning_rate=float("nan"))
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  train_split, test_split = countdown.make_splits(0, 200, 16, count=config.task.numbers)
  train.train(config, countdown.Countdown(config.task.numbers), model, tokenizer, train_split,
              test_split, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert all(r["skipped"] == 1 for r in rows)  # a NaN step is logged and skipped
  step, params, _ = _final_params(tmp_path)
  assert step == 2 and all(np.isfinite(np.asarray(p)).all() for p in params)


def test_evaluation_restores_params_whatever_the_optimizer_state(tmp_path):
  """--mode eval reads the params of a run trained with the value head's own learning rate
  (its optimizer state has another structure than the default learner's): it once fell back,
  with a warning, to the initial model and scored that."""
  from flax import nnx

  from jaxdistill import main
  from jaxdistill.train.checkpointing import Checkpointer
  from jaxdistill.rl import learner
  model, _ = main.load_model_and_tokenizer(_config(), str(tmp_path))
  graphdef, params = nnx.split(model)
  trained = jax.tree.map(lambda x: x + 1.0, params)
  optimizer = learner.make_optimizer(learner_config(learning_rate=1e-5,
                                                           value_learning_rate=1e-3))
  checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
  checkpointer.save(3, learner.init_state(trained, optimizer, jax.random.PRNGKey(0)), 7)
  restored = nnx.split(main._restore_params(model, str(tmp_path)))[1]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               restored, trained)
  # no checkpoint: the initial model; checkpoints that are all unreadable: a clear error
  fresh = nnx.split(main._restore_params(model, str(tmp_path / "elsewhere")))[1]
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               fresh, params)
  for root, _, files in os.walk(tmp_path / "checkpoints" / "3"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"corrupted")
  with pytest.raises(main.UsageError, match="readable"):
    main._restore_params(model, str(tmp_path))


def test_test_time_search_is_deterministic_and_reports_its_budget(tmp_path):
  """Same seed, same result; the reported budget is iterations x agents per problem."""
  import dataclasses

  from flax import nnx

  from jaxdistill import evaluate, main, parallel
  from jaxdistill.tasks import countdown
  from jaxdistill import settings
  config = _config()
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  spec = settings.iteration(config, tokenizer, "</step>", model.config.vocab_size)
  problems = countdown.generate(5, seed=21)
  run = lambda: evaluate.evaluate_with_search(model, tokenizer, countdown.Countdown(), problems,
                                              spec.search,
                                              spec.rollout, prompt_width=48, batch_size=4)
  first, second = run(), run()
  assert first == second
  assert first["problems"] == 5 and 0.0 <= first["search_solved"] <= 1.0
  assert first["simulations_per_problem"] == 4 and first["generated_tokens"] > 0
  # other problems reuse the compiled search (and its executable), whose reward grades them
  compiled = evaluate._search_program.cache_info().misses
  program, current = evaluate._search_program(
      nnx.graphdef(model), dataclasses.replace(spec.search, targets="path"), spec.rollout,
      countdown.Countdown(), tokenizer, True)
  executables = program._cache_size()
  others = countdown.generate(3, seed=22)
  texts, _ = evaluate.searched_answers(model, tokenizer, countdown.Countdown(), others,
                                       spec.search, spec.rollout,
                                       prompt_width=48, batch_size=4)
  assert len(texts) == 3 and evaluate._search_program.cache_info().misses == compiled
  assert current == list(others) and program._cache_size() == executables
  # trained params come back replicated over the training mesh (8 devices here), a loaded
  # model's sit on one device: the program compiled for the one serves the other, same answers
  graphdef, params = nnx.split(model)
  replicated = nnx.merge(graphdef, parallel.replicate(params, parallel.make_mesh()))
  assert len(jax.tree.leaves(nnx.state(replicated))[0].sharding.device_set) == 8
  executables = program._cache_size()
  again, _ = evaluate.searched_answers(replicated, tokenizer, countdown.Countdown(), others,
                                       spec.search,
                                       spec.rollout, prompt_width=48, batch_size=4)
  assert again == texts and program._cache_size() == executables


def test_search_diagnostics_report_consistent_shares_and_budgets(tmp_path):
  from jaxdistill import main
  from jaxdistill.experiments import search_diagnostics
  from jaxdistill.tasks import countdown
  config = _config()
  model, tokenizer = main.load_model_and_tokenizer(config, str(tmp_path))
  problems = countdown.generate(8, seed=3, count=config.task.numbers)
  config.deepsearch.expansions, config.deepsearch.trajectories = 3, 2
  result = search_diagnostics.diagnose(config, countdown.Countdown(config.task.numbers), model,
                                       tokenizer, problems, samples=3, with_deepsearch=True)
  assert result["problems"] == 8 and result["samples"] == 3
  # DeepSearch: at most E expansions of K steps of <= L tokens per problem
  d, s = config.deepsearch, config.search
  assert 0 < result["deepsearch_tokens_per_problem"] <= (d.expansions * s.num_children
                                                         * s.max_step_tokens)
  assert (result["deepsearch_harvested_distinct_solutions"]
          <= result["deepsearch_tree_distinct_solutions"])
  for source in ("mcts_tree", "samples", "deepsearch_tree"):
    assert result[f"{source}_distinct_solutions_per_1k_tokens"] >= 0.0
  for key in ("sample_solved", "sample_pass", "path_solved", "tree_solved"):
    assert 0.0 <= result[key] <= 1.0
  assert result["sample_pass"] >= result["sample_solved"]  # any of 3 >= their mean
  assert 1.0 <= result["distinct_children"] <= config.search.num_children
  s = config.search
  assert result["simulations"] == s.num_iterations * s.num_agents
  # every expansion samples K steps of <= L tokens; completions add <= the rollout cap
  search_cap = ((1 + s.num_iterations * s.num_agents) * s.num_children * s.max_step_tokens
                + config.rollout.max_completion_tokens)
  assert 0 < result["search_tokens_per_problem"] <= search_cap
  assert 0 < result["sample_tokens_per_problem"] <= 3 * config.rollout.max_completion_tokens
  # trees: depth within the simulations, terminals among the expanded nodes
  assert 1 <= result["tree_depth"] <= s.num_iterations * s.num_agents
  assert 0 <= result["terminals_per_tree"] <= s.num_iterations * s.num_agents
  assert 0.0 <= result["answer_depth_share"] <= 1.0
  assert 1 <= result["samples_at_equal_tokens"] <= 3
  assert 0.0 <= result["sample_pass_at_equal_tokens"] <= result["sample_pass"] + 1e-9


def test_pass_at_m_is_the_unbiased_estimate():
  from math import comb

  from jaxdistill.experiments.search_diagnostics import pass_at
  for n, c, m in [(16, 0, 4), (16, 1, 4), (16, 3, 8), (16, 16, 1), (16, 2, 16), (32, 5, 7)]:
    assert abs(pass_at(n, c, m) - (1 - comb(n - c, m) / comb(n, m))) < 1e-12
