"""The comparison table: per-seed scores, spread, paired differences with standard errors."""

import json
import os

import numpy as np
import pytest

from jaxdistill.experiments import compare, evaluations, report, settings, training_runs


def _record(method, seed, low, high=None, lr=None):
  score = lambda s: {"mean@16": s, "pass@16": min(1.0, 2 * s)}
  return {"method": method, "seed": seed, "lr": lr, "generated_tokens": 0 if lr is None else 1000,
          "iterations": 4, "train_s": 120.0,
          "test": {"0.2": score(low), "0.8": score(high if high is not None else low / 2)}}


def test_summary_pairs_seeds_and_gives_the_standard_error_of_the_difference():
  records = [_record("base", s, x) for s, x in enumerate([0.10, 0.12, 0.14])]
  records += [_record("cispo", s, x, lr=3e-5) for s, x in enumerate([0.20, 0.21, 0.25])]
  for seed, record in enumerate(records[-3:]):  # 8 updates: quarters of 2
    record["reward"] = [seed + i for i in range(8)]
    # the value head's squared error against the best constant's: explained variance
    # 1 - (0.5 + 0.5) / (1 + 1) = 0.5 in the first quarter, 0 in the second, then 0.75 and
    # -1 (worse than a constant); the same in every seed
    record["value_loss"] = [0.5, 0.5, 1.0, 3.0, 0.25, 0.25, 2.0, 2.0]
    record["value_target_var"] = [1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0]
  records += [_record("mcts_tree", s, x, lr=1e-5) for s, x in enumerate([0.24, 0.26, 0.30])]
  for record, replayed in zip(records[-3:], (2, 4, 6)):  # solutions from a replay buffer
    record["replayed"] = replayed
  rows = {r["method"]: r for r in report.summarize(records, 16, ["0.2", "0.8"])}
  assert rows["cispo"]["mean@16/T0.2"] == [0.20, 0.21, 0.25]
  assert rows["mcts_tree"]["replayed"] == 4.0 and rows["cispo"]["replayed"] == 0.0
  # mcts_tree - cispo by seed: 0.04, 0.05, 0.05
  diff, se, n, with_problems = rows["mcts_tree"]["minus_cispo"]
  assert n == 3 and np.isclose(diff, np.mean([0.04, 0.05, 0.05])) and with_problems is None
  assert np.isclose(se, np.std([0.04, 0.05, 0.05], ddof=1) / np.sqrt(3))
  assert "minus_cispo" not in rows["cispo"]
  assert np.isclose(rows["cispo"]["minus_base"][0], np.mean([0.10, 0.09, 0.11]))
  table = report.markdown(list(rows.values()), 16, "header", ["0.2", "0.8"]).splitlines()
  assert table[0] == "header" and len(table) == 7  # header, blank, 2 table lines, 3 rows
  tree = next(line for line in table if line.startswith("| mcts_tree |"))
  # a lead of 4.7 points with an SE of 0.3 is flagged as beyond two standard errors
  assert "| 26.7% ± 3.1 | 24.0, 26.0, 30.0 | +4.7 ± 0.3 **(> 2 SE)** |" in tree
  # the training reward's curve: quarter means over the run, averaged over seeds
  assert rows["cispo"]["reward_quarters"] == [1.5, 3.5, 5.5, 7.5]
  assert "reward_quarters" not in rows["mcts_tree"]
  assert rows["cispo"]["value_explained_quarters"] == [0.5, 0.0, 0.75, -1.0]
  assert next(line for line in table if line.startswith("| cispo |")).endswith(
      "| +1.50 → +3.50 → +5.50 → +7.50 | +0.50 → +0.00 → +0.75 → -1.00 |")
  assert "value_explained_quarters" not in rows["mcts_tree"] and tree.endswith("| - | - |")
  # every line has as many cells as the header; with one temperature (--temperatures=0.2) its
  # columns appear once, not a second time in the other temperature's place
  assert "| tokens | replayed solutions (no tokens) | iterations |" in table[2]
  for temperatures, cells in ((["0.2", "0.8"], 15), (["0.2"], 13)):
    rows = report.summarize(records, 16, temperatures)
    table = report.markdown(rows, 16, "h", temperatures).splitlines()[2:]
    assert {line.count("|") - 1 for line in table} == {cells}
    assert table[0].count("T=0.2") == 2 and table[0].count("T=0.8") == 2 * (cells == 15)


def test_standard_error_with_problems_adds_the_spread_of_the_per_problem_differences():
  # two seeds, four problems; the runs' mean@16 are the means of their per-problem scores
  per_problem = {("mcts_tree", 0): [0.5, 0.0, 0.25, 0.25], ("mcts_tree", 1): [0.5, 0.25, 0.0, 0.25],
                 ("cispo", 0): [0.25, 0.0, 0.25, 0.0], ("cispo", 1): [0.25, 0.25, 0.25, 0.0]}
  records = []
  for (method, seed), scores in per_problem.items():
    records.append(_record(method, seed, float(np.mean(scores)), lr=1e-5) | {"per_problem": scores})
  diff, se, n, with_problems = report.paired(records, "mcts_tree", "cispo", 16, "0.2")
  # per-seed differences 0.125 and 0.0625; per problem, averaged over seeds: .25, 0, -.125, .25
  assert n == 2 and np.isclose(diff, 0.09375)
  assert np.isclose(se, np.std([0.125, 0.0625], ddof=1) / np.sqrt(2))
  # differences [[.25, 0, 0, .25], [.25, 0, -.25, .25]]: MS_problem = 2 var(.25, 0, -.125, .25)
  # = .0703125; residuals +-.03125 (six) and +-.09375 (two) over 3 df: MS_resid = .0078125;
  # the problems' term (.0703125 - .0078125) / 8 = .0078125, below the biased .0087890625
  assert np.isclose(with_problems ** 2, se ** 2 + 0.0078125)
  assert np.isclose(report.problem_variance([[0.25, 0, 0, 0.25], [0.25, 0, -0.25, 0.25]]),
                    0.0078125)
  # the flag past 2 SE uses the larger error: +9.4 is past 2 x 3.1 but not past 2 x 9.9
  rows = {r["method"]: r for r in report.summarize(records, 16, ["0.2", "0.8"])}
  line = report.markdown([rows["mcts_tree"]], 16, "h", ["0.2", "0.8"]).splitlines()[-1]
  assert f"| +9.4 ± 3.1 (± {100 * with_problems:.1f} with problems) |" in line
  assert "2 SE" not in line and with_problems > 0.047
  # a run without per-problem scores leaves the second error out
  del records[0]["per_problem"]
  assert report.paired(records, "mcts_tree", "cispo", 16, "0.2")[3] is None
  # one seed has no standard error over seeds to give: the table says so instead of printing
  # nan, with the SE of that seed's difference over its problems (differences .25, 0, -.25,
  # .25: std 0.2394 over 4 problems)
  one = [r for r in records if r["seed"] == 1]
  diff, se, n, with_problems = report.paired(one, "mcts_tree", "cispo", 16, "0.2")
  assert n == 1 and np.isclose(diff, 0.0625) and np.isnan(se)
  assert np.isclose(with_problems, np.std([0.25, 0, -0.25, 0.25], ddof=1) / 2)
  rows = {r["method"]: r for r in report.summarize(one, 16, ["0.2", "0.8"])}
  line = report.markdown([rows["mcts_tree"]], 16, "h", ["0.2", "0.8"]).splitlines()[-1]
  assert "| +6.2 (1 seed: no SE; ± 12.0 over its problems alone) |" in line
  assert "nan" not in line
  # the verdict judges nothing from one seed, and does not call it no difference either
  summary = report.verdict(list(rows.values()))["summary"]
  assert not summary.startswith("No method differs") and "nan" not in summary
  assert "mcts_tree minus cispo +6.2 (± 12.0 over its problems alone)" in summary


def test_the_verdict_names_every_difference_past_two_standard_errors_whichever_side_leads():
  # paired tuples: (difference, SE over seeds, seeds, SE with problems)
  rows = [{"method": "base", "minus_cispo": (-0.020, 0.004, 5, 0.006)},  # cispo's, mirrored
          {"method": "cispo", "minus_base": (0.020, 0.004, 5, 0.006)},  # 2.0 > 2 x 0.6: counts
          # cispo leads: -1.3 is past 2 x 0.5 (the larger SE), so it counts against search too
          {"method": "mcts_distill", "minus_cispo": (-0.013, 0.002, 5, 0.005),
           "minus_base": (0.007, 0.003, 5, 0.004)},  # 0.7 < 2 x 0.4: does not count
          # past 2 x 0.2 over seeds but not past 2 x 0.6 with the problems: does not count
          {"method": "deepsearch", "minus_cispo": (0.010, 0.002, 5, 0.006),
           "minus_base": (0.030, 0.004, 1, None)}]  # one seed: no SE, never counts
  decided = report.verdict(rows)
  assert [(p["method"], p["other"], p["counts"]) for p in decided["pairs"]] == [
      ("cispo", "base", True), ("mcts_distill", "cispo", True), ("mcts_distill", "base", False),
      ("deepsearch", "cispo", False), ("deepsearch", "base", False)]
  assert decided["pairs"][1]["se"] == 0.005
  assert decided["summary"] == ("cispo leads base by 2.0 ± 0.6 points; "
                                "cispo leads mcts_distill by 1.3 ± 0.5 points; with one seed "
                                "the seeds' spread is unknown, so these are not judged: "
                                "deepsearch minus base +3.0.")
  # no lead over or behind cispo counts: the sentence says so, with each difference
  rows[2]["minus_cispo"] = (-0.008, 0.002, 5, 0.005)
  assert report.verdict(rows)["summary"] == (
      "No method differs from cispo by more than 2 SE (mcts_distill -0.8 ± 0.5; "
      "deepsearch +1.0 ± 0.6); cispo leads base by 2.0 ± 0.6 points; with one seed the "
      "seeds' spread is unknown, so these are not judged: deepsearch minus base +3.0.")


def test_the_learning_curves_and_the_base_level_are_on_the_same_validation_problems(
    monkeypatch):
  """The curve's points score the first eval.curve_problems validation problems, its last
  point (the final validation) the whole split: the plot leaves that point out and draws the
  base model's mean on the curve's problems, not on the whole split."""
  scores = {"validation": {"mean@16": 0.25, "per_problem": [0.5, 0.25, 0.0, 0.25]}}
  monkeypatch.setattr(evaluations, "evaluate", lambda workdir, overrides, t, split="test", **_:
                      scores.get(split, {"mean@16": 0.1, "mean@4": 0.1, "pass@16": 0.2}))
  monkeypatch.setattr(evaluations, "test_scores", lambda workdir, overrides: {})
  monkeypatch.setattr(settings, "FLAGS", type("F", (), dict(
      workdir="w", reference_problems=2, preset="tiny", set=["eval.curve_problems=2"])))
  base = evaluations.base_run(0, [])
  assert base["validation"] == 0.25 and base["curve_validation"] == 0.375
  run = lambda seed, curve, final: {"method": "cispo", "seed": seed, "validation": final,
                                    "curve": curve + [(30, final)]}
  level, methods = report.learning_curves(
      [base, run(0, [(10, 0.5), (20, 0.75)], 0.25), run(1, [(12, 0.25), (22, 0.25)], 0.5)])
  assert level == 0.375
  curves, mean = methods["cispo"]
  assert [c.tolist() for c in curves] == [[[10, 0.5], [20, 0.75]], [[12, 0.25], [22, 0.25]]]
  np.testing.assert_allclose(mean, [[11, 0.375], [21, 0.5]])


def test_asking_for_per_problem_scores_reuses_the_evaluation(tmp_path, monkeypatch):
  calls = []

  def fake_run(workdir, overrides, mode="train"):  # what --mode eval writes
    calls.append(mode)
    with open(os.path.join(workdir, "eval_result.json"), "w") as f:
      json.dump({"mean@16": 0.25, "per_problem": [0.5, 0.0]}, f)
    return 0.0
  monkeypatch.setattr(evaluations, "run_job", fake_run)
  workdir = str(tmp_path)
  assert evaluations.evaluate(workdir, ["seed=0"], "0.2") == {"mean@16": 0.25}
  scores = evaluations.evaluate(workdir, ["seed=0"], "0.2", per_problem=True)
  assert scores["per_problem"] == [0.5, 0.0] and calls == ["eval"]  # one evaluation for both
  # a cache written before per-problem scores were recorded is evaluated again, once
  with open(tmp_path / "eval_test_t0.2.json", "w") as f:
    json.dump({"mean@16": 0.25}, f)
  for _ in range(2):
    assert evaluations.evaluate(workdir, ["seed=0"], "0.2", per_problem=True)["per_problem"] == [0.5, 0.0]
  assert calls == ["eval", "eval"]


def test_importing_the_script_defines_no_flags_that_clash_with_main():
  import jaxdistill.main  # noqa: F401  (defines --workdir, as compare's CLI does)
  from absl import flags
  assert "workdir" in flags.FLAGS and "token_budget" not in flags.FLAGS


def test_stopping_the_comparison_lets_the_job_checkpoint_and_exits(tmp_path):
  """SIGTERM to the comparison reaches its running job, which finishes its work (here: writes
  a file) instead of being killed; the comparison then exits 0 without going on."""
  import signal
  import subprocess
  import sys
  import time
  job = tmp_path / "job.py"
  job.write_text(
      "import signal, sys, time\n"
      "stop = []\n"
      "signal.signal(signal.SIGTERM, lambda *a: stop.append(1))\n"
      f"open({str(tmp_path / 'started')!r}, 'w').close()\n"
      "while not stop: time.sleep(0.01)\n"
      "time.sleep(0.5)  # the rest of the iteration, then the checkpoint\n"
      f"open({str(tmp_path / 'checkpoint')!r}, 'w').close()\n")
  parent = subprocess.Popen([sys.executable, "-c", (
      "import sys; from jaxdistill.experiments import jobs\n"
      f"jobs.run_command([sys.executable, {str(job)!r}])\n"
      f"open({str(tmp_path / 'went_on')!r}, 'w').close()\n")], stdout=subprocess.PIPE,
      text=True)
  deadline = time.time() + 60
  while not (tmp_path / "started").exists() and time.time() < deadline:
    time.sleep(0.01)
  parent.send_signal(signal.SIGTERM)
  output = parent.communicate(timeout=60)[0]
  assert parent.returncode == 0 and "run the same command to resume" in output
  assert (tmp_path / "checkpoint").exists()  # the job was waited for, not killed
  assert not (tmp_path / "went_on").exists()  # a stopped job is not taken for a finished one


def test_evaluation_key_sets_move_only_the_seed_and_pool_to_mean_at_k_times_sets():
  overrides = ["sft.cache_dir=/w", "seed=2", "learner.learning_rate=1e-5"]
  assert evaluations.with_key_set(overrides, 1) == ["sft.cache_dir=/w", "seed=1002",
                                                "learner.learning_rate=1e-5"]
  assert evaluations.with_key_set(overrides, 2)[1] == "seed=2002"
  assert overrides[1] == "seed=2"  # the run's own overrides are left alone
  with np.testing.assert_raises(ValueError):
    evaluations.with_key_set(["sft.cache_dir=/w"], 1)
  sets = [{"mean@16": 0.10, "pass@16": 0.30, "problems": 820},
          {"mean@16": 0.14, "pass@16": 0.34, "problems": 820},
          {"mean@16": 0.15, "pass@16": 0.29, "problems": 820}]
  pooled = evaluations.pool_key_sets(sets, 16)
  # each set is the mean of 820 x 16 rewards: their mean is the mean of all 820 x 48
  assert np.isclose(pooled["mean@16"], 0.13) and np.isclose(pooled["pass@16"], 0.31)
  assert pooled["key_sets"] == [0.10, 0.14, 0.15]
  # pooled scores go through the table like single ones
  records = [{"method": m, "seed": s, "lr": None, "generated_tokens": 0, "iterations": 0,
              "test": {"0.2": evaluations.pool_key_sets(sets[s:s + 2], 16) if m == "base"
                       else {"mean@16": 0.2, "pass@16": 0.4}, "0.8": sets[s]}}
             for m in ("base", "cispo") for s in range(2)]
  rows = {r["method"]: r for r in report.summarize(records, 16, ["0.2", "0.8"])}
  assert np.allclose(rows["base"]["mean@16/T0.2"], [0.12, 0.145])
  assert np.isclose(rows["cispo"]["minus_base"][0], 0.2 - np.mean([0.12, 0.145]))


def _fake_job(workdir, mode, rows, step):
  """What a `jaxdistill.main` job leaves in its workdir: --mode eval its result, a training
  run its metrics rows and a checkpoint at `step`."""
  os.makedirs(workdir, exist_ok=True)
  if mode == "eval":
    with open(os.path.join(workdir, "eval_result.json"), "w") as f:
      json.dump({"mean@4": 0.5, "pass@4": 0.75, "per_problem": [0.25, 0.75]}, f)
    return 0.0
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.makedirs(os.path.join(workdir, "checkpoints", str(step)), exist_ok=True)
  return 10.0


def _flags(tmp_path, token_budget):
  import types
  return types.SimpleNamespace(
      workdir=str(tmp_path), equal="tokens", token_budget=token_budget, curve_points=1,
      temperatures=["0.2"], eval_key_sets=1, preset="tiny", set=[], test_k=4,
      reference_problems=820, jobs=1)


def test_a_run_is_scored_on_validation_and_on_test_only_once_picked(tmp_path, monkeypatch):
  """train_run scores a run on validation only (its own final evaluation, val_after.json, or
  evaluated again for a run without it); with_test, called for picked rates alone, adds
  mean@test_k on every test problem with its per-problem scores, and the reference's metric
  from the run's own final evaluation of the first --reference_problems problems."""
  calls = []
  keep = [True]
  rows = [{"step": 1, "loss": 0.0, "generated_tokens": 60, "elapsed_s": 1.0, "reward": 0.1},
          {"step": 2, "loss": 0.0, "generated_tokens": 60, "elapsed_s": 2.0, "reward": 0.2},
          {"step": 2, "eval_mean@16": 0.5, "eval_pass@16": 0.5, "eval_problems": 820},
          {"step": 2, "val_mean@16": 0.125}]

  def fake_run(workdir, overrides, mode="train"):
    calls.append((mode, [o for o in overrides
                         if o.startswith(("eval.k=", "eval.num_problems=", "eval.split="))]))
    seconds = _fake_job(workdir, mode, rows, step=2)
    if mode == "train" and keep[0]:
      with open(os.path.join(workdir, "val_after.json"), "w") as f:
        json.dump({"mean@16": 0.125, "step": 2, "temperature": 0.2,
                   "per_problem": [0.0, 0.25]}, f)
    return seconds
  monkeypatch.setattr(evaluations, "run_job", fake_run)
  monkeypatch.setattr(training_runs, "tokens_per_iteration", lambda method, common: 60.0)
  monkeypatch.setattr(settings, "FLAGS", _flags(tmp_path, token_budget=120))
  record = training_runs.train_run("cispo", 0, "1e-5", [], sweep=True)
  assert calls == [("train", ["eval.num_problems=820"])]  # no test score yet
  assert record["validation"] == 0.125 and record["validation_per_problem"] == [0.0, 0.25]
  assert "test" not in record
  record = training_runs.with_test(record, [])
  assert calls[-1] == ("eval", ["eval.num_problems=820", "eval.split=test",
                                "eval.num_problems=100000", "eval.k=4"])
  assert record["test"] == {"0.2": {"mean@4": 0.5, "pass@4": 0.75}, "per_problem": [0.25, 0.75]}
  assert record["reference"] == {"mean@16": 0.5, "pass@16": 0.5, "problems": 820}
  keep[0] = False  # a run without val_after.json: its validation problems evaluated again
  calls.clear()
  record = training_runs.train_run("cispo", 1, "1e-5", [], sweep=True)
  assert [mode for mode, _ in calls] == ["train", "eval"]
  assert record["validation_per_problem"] == [0.25, 0.75]
  assert "eval.split=validation" in calls[-1][1]


def test_a_picked_run_without_its_checkpoint_is_scored_from_its_cache_or_trained_again(
    tmp_path, monkeypatch):
  """Records travel between machines without checkpoints. Scoring such a run on test reads
  its cached evaluations; without them it trains the run again in `<run>-again` (never
  evaluates the initial model in its place) and scores that one, whose record is the row's
  and says whether it repeated the first. The first record, which the pick read, is never
  touched, a second run scored once is not trained a third time, and a record tested already is
  returned as it is."""
  import shutil
  calls, validation = [], [0.125]

  def fake_run(workdir, overrides, mode="train"):
    calls.append((mode, os.path.basename(workdir)))
    rows = [{"step": 1, "loss": 0.0, "generated_tokens": 60, "elapsed_s": 1.0, "reward": 0.1,
             "replayed": 3},
            {"step": 1, "eval_mean@16": 0.5, "eval_pass@16": 0.5, "eval_problems": 820},
            {"step": 1, "val_mean@16": validation[0]}]
    return _fake_job(workdir, mode, rows, step=1)
  monkeypatch.setattr(evaluations, "run_job", fake_run)
  monkeypatch.setattr(training_runs, "tokens_per_iteration", lambda method, common: 60.0)
  monkeypatch.setattr(settings, "FLAGS", _flags(tmp_path, token_budget=60))
  first = tmp_path / "deepsearch-lr1e-5-seed0"
  again = tmp_path / "deepsearch-lr1e-5-seed0-again"
  record = training_runs.train_run("deepsearch", 0, "1e-5", [])
  assert record["replayed"] == 3 and calls == [("train", first.name)]
  picked_on = (first / "compare_run.json").read_bytes()
  shutil.rmtree(first / "checkpoints")
  tested = training_runs.with_test(record, [])
  assert calls[1:] == [("train", again.name), ("eval", again.name)]
  assert tested["test"]["0.2"]["mean@4"] == 0.5
  assert tested["trained_again"] == {"repeated": True, "first_validation": 0.125,
                                     "first_generated_tokens": 60}
  assert (first / "compare_run.json").read_bytes() == picked_on
  # the second run's checkpoint gone too: its cached scores are read, nothing runs
  shutil.rmtree(again / "checkpoints")
  calls.clear()
  read_back = training_runs.with_test(record, [])
  assert calls == [] and read_back["test"] == tested["test"]
  assert read_back["trained_again"] == tested["trained_again"]
  # ... but where they were not all made, it is trained once more
  os.remove(again / "eval_test_t0.2_k4.json")
  assert training_runs.with_test(record, [])["test"] == tested["test"]
  assert calls == [("train", again.name), ("eval", again.name)]

  # another machine: the second run differs; its row is its own, the pick's record stays
  validation[0] = 0.25
  shutil.rmtree(again)  # (the first run's checkpoint is gone since the start)
  tested = training_runs.with_test(record, [])
  assert tested["validation"] == 0.25 and tested["trained_again"]["repeated"] is False
  assert tested["trained_again"]["first_validation"] == 0.125
  assert (first / "compare_run.json").read_bytes() == picked_on
  assert training_runs.record_of("deepsearch", 0, "1e-5")["validation"] == 0.125
  # a record tested already is the row as it is: testing it again would compare the second
  # run with itself and call it repeated
  calls.clear()
  assert training_runs.with_test(tested, []) == tested and calls == []

  # a run scored on this machine keeps its scores when its checkpoint is gone
  validation[0] = 0.125
  other = training_runs.train_run("deepsearch", 1, "1e-5", [])
  training_runs.with_test(other, [])
  shutil.rmtree(tmp_path / "deepsearch-lr1e-5-seed1" / "checkpoints")
  calls.clear()
  assert "trained_again" not in training_runs.with_test(other, []) and calls == []


def test_equal_updates_gives_every_run_the_preset_s_iterations_in_workdirs_of_their_own(
    tmp_path, monkeypatch):
  """--equal=updates (the reference's protocol): no token budget, the preset's iterations and
  a decay over them; at equal tokens the iterations follow the method's probe."""
  import types
  monkeypatch.setattr(training_runs, "tokens_per_iteration", lambda method, common: 100.0)
  flags = dict(workdir=str(tmp_path), token_budget=1000, curve_points=5, preset="tiny4",
               set=[], reference_problems=820)
  monkeypatch.setattr(settings, "FLAGS", types.SimpleNamespace(equal="updates", **flags))
  iterations = settings.config().train.num_iterations
  updates = training_runs.train_overrides("cispo", 0, "1e-5", [])
  assert f"train.num_iterations={iterations}" in updates
  assert f"learner.decay_steps={iterations}" in updates
  assert not any(o.startswith("train.token_budget=") for o in updates)
  assert training_runs.run_dir("cispo", 0, "1e-5").endswith("cispo-lr1e-5-seed0-updates")
  monkeypatch.setattr(settings, "FLAGS", types.SimpleNamespace(equal="tokens", **flags))
  tokens = training_runs.train_overrides("cispo", 0, "1e-5", [])
  assert {"train.token_budget=1000", "learner.decay_steps=10", "train.num_iterations=30"} <= set(
      tokens)
  assert training_runs.run_dir("cispo", 0, "1e-5").endswith("cispo-lr1e-5-seed0")


def test_a_lead_of_either_sign_past_two_standard_errors_is_flagged():
  """cispo ahead of a search method is flagged like the other way round; the reference's
  mean@16 on its own problems gets its columns."""
  records = []
  for seed, (cispo, tree) in enumerate([(0.30, 0.20), (0.32, 0.21), (0.31, 0.22)]):
    for method, score in (("cispo", cispo), ("mcts_tree", tree)):
      records.append(_record(method, seed, score, lr=1e-5)
                     | {"reference": {"mean@16": score / 2, "pass@16": score, "problems": 820}})
  rows = {r["method"]: r for r in report.summarize(records, 16, ["0.2"])}
  line = report.markdown([rows["mcts_tree"]], 16, "h", ["0.2"]).splitlines()[-1]
  assert "| -10.0 ± 0.6 **(> 2 SE)** |" in line
  assert "| 10.5% ± 0.5 | 21.0% |" in line  # reference mean@16 (mean ± std), pass@16
  header = report.markdown([rows["mcts_tree"]], 16, "h", ["0.2"]).splitlines()[2]
  assert "reference mean@16 (820 problems)" in header
  assert header.count("|") == line.count("|")


def test_the_default_token_budget_is_the_preset_s_own_search_run(monkeypatch):
  """tiny: the measured 1,422,558 of the tables in results/; another preset: mcts_distill's
  probe (tokens per iteration) x its train.num_iterations, --set included."""
  import types
  probed = []
  monkeypatch.setattr(training_runs, "tokens_per_iteration",
                      lambda method, common: probed.append(method) or 1000.5)
  monkeypatch.setattr(settings, "FLAGS", types.SimpleNamespace(preset="tiny", set=[]))
  assert training_runs.default_budget([]) == 1_422_558 and probed == []
  monkeypatch.setattr(settings, "FLAGS", types.SimpleNamespace(preset="medium", set=[]))
  assert training_runs.default_budget([]) == round(1000.5 * 232) and probed == ["mcts_distill"]
  monkeypatch.setattr(settings, "FLAGS", types.SimpleNamespace(
      preset="medium", set=["train.num_iterations=10"]))
  assert training_runs.default_budget([]) == 10_005


def test_status_counts_the_protocol_s_runs_from_the_records_alone(tmp_path, monkeypatch,
                                                                   capsys):
  """--status runs no job: each method's finished training runs out of its grid x picking
  seeds plus the other seeds at its pick, and the pick once the sweep is complete (pooled
  validation, as the comparison picks it); a record at a rate not picked does not count."""
  flags = _flags(tmp_path, token_budget=120)
  for name, value in dict(methods=["base", "cispo", "mcts_distill"], seeds=["0", "1", "2"],
                          pick_seeds=2, learning_rates=["1e-5", "3e-5"],
                          method_learning_rates=[], status=True).items():
    setattr(flags, name, value)
  monkeypatch.setattr(settings, "FLAGS", flags)
  monkeypatch.setattr(evaluations, "run_job", lambda *args, **kwargs: pytest.fail("ran a job"))
  # cispo pooled over seeds 0, 1: 1e-5 at 0.15, 3e-5 at 0.2 -> 3e-5
  for method, lr, seed, validation in [("cispo", "1e-5", 0, 0.1), ("cispo", "1e-5", 1, 0.2),
                                       ("cispo", "3e-5", 0, 0.3), ("cispo", "3e-5", 1, 0.1),
                                       ("cispo", "3e-5", 2, 0.2), ("cispo", "1e-5", 2, 0.5),
                                       ("mcts_distill", "1e-5", 0, 0.1)]:
    workdir = training_runs.run_dir(method, seed, lr)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "compare_run.json"), "w") as f:
      # mcts_distill's run was resumed: its last process took 2 of its 8 minutes' training
      json.dump({"validation": validation, "wall_s": 120.0}
                | ({"train_s": 480.0} if method == "mcts_distill" else {}), f)
  # under way: a run of the sweep two updates in (a step logged twice: resumed); a finished
  # run's files and a run at a rate not picked (not the protocol's) are not listed
  for method, lr, seed in [("mcts_distill", "3e-5", 1), ("cispo", "3e-5", 2),
                           ("cispo", "1e-5", 3)]:
    workdir = training_runs.run_dir(method, seed, lr)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump({"train": {"token_budget": 4000, "num_iterations": 30}}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      for step in (1, 2, 2):
        f.write(json.dumps({"step": step, "loss": 0.0, "generated_tokens": 500}) + "\n")
      f.write(json.dumps({"step": 2, "val_mean@16": 0.1}) + "\n")
  compare.main([])
  lines = capsys.readouterr().out.splitlines()
  assert lines[-6:] == [
      f"{tmp_path}: 6 of 10 training runs finished",
      "cispo: 5/5 training runs, rate picked: 3e-05, 2 min per training job",
      "mcts_distill: 1/5 training runs, rate not picked yet (from 1e-5, 3e-5), 8 min per "
      "training job",
      "  under way: lr 3e-5, seed 1, 1,000 of 4,000 generated tokens (25%)",
      # (5 x 2 + 8) / 6 = 3 min per job
      "4 training runs left, about 0.2 hours at 3 min per job so far and --jobs=1"]


def test_keep_records_copies_what_a_comparison_needs_to_go_on_elsewhere(tmp_path, monkeypatch,
                                                                        capsys):
  """--keep_records: finished runs' JSON and JSONL (not checkpoints, tokenizers, logs or
  splits), the base model's, the probes' and the preparing job's evaluations, the probes'
  results and the warm start; an unfinished run and a retrain without its record are left;
  a folder copied replaces its old copy, other folders of the destination stay; no job runs."""
  workdir, dest = tmp_path / "work", tmp_path / "state"
  files = ["warm_start/model.safetensors", "warm_start/sft_done.json",
           "base-seed0/eval_test_t0.2_k4.json", "prepare/eval_result.json",
           "probe-cispo/metrics.jsonl", "probe-cispo/checkpoints/2/state", "probe-cispo.json",
           "cispo-lr1e-5-seed0/compare_run.json", "cispo-lr1e-5-seed0/metrics.jsonl",
           "cispo-lr1e-5-seed0/eval_test_t0.2_k4.json", "cispo-lr1e-5-seed0/job.log",
           "cispo-lr1e-5-seed0/eval_test_t0.2_k4.json.partial",
           "cispo-lr1e-5-seed0/checkpoints/9/state.json",
           "cispo-lr1e-5-seed0/tokenizer/tokenizer.json",
           "cispo-lr1e-5-seed1/metrics.jsonl", "cispo-lr1e-5-seed1/checkpoints/4/state",
           "cispo-lr1e-5-seed0-again/metrics.jsonl", "data/train.jsonl", "log.txt"]
  for name in files:
    (workdir / name).parent.mkdir(parents=True, exist_ok=True)
    (workdir / name).write_text(json.dumps({"file": name, "validation": 0.1, "wall_s": 60.0}))
  for name in ["cispo-lr1e-5-seed0/stale.json", "other-run/compare_run.json"]:
    (dest / name).parent.mkdir(parents=True, exist_ok=True)
    (dest / name).write_text("old")
  flags = _flags(workdir, token_budget=120)
  for name, value in dict(methods=["base", "cispo"], seeds=["0", "1"], pick_seeds=2,
                          learning_rates=["1e-5"], method_learning_rates=[], status=False,
                          keep_records=str(dest)).items():
    setattr(flags, name, value)
  monkeypatch.setattr(settings, "FLAGS", flags)
  monkeypatch.setattr(evaluations, "run_job", lambda *args, **kwargs: pytest.fail("ran a job"))
  compare.main([])
  kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
  assert kept == sorted([
      "warm_start/model.safetensors", "warm_start/sft_done.json",
      "base-seed0/eval_test_t0.2_k4.json", "prepare/eval_result.json",
      "probe-cispo/metrics.jsonl", "probe-cispo.json", "cispo-lr1e-5-seed0/compare_run.json",
      "cispo-lr1e-5-seed0/metrics.jsonl", "cispo-lr1e-5-seed0/eval_test_t0.2_k4.json",
      "other-run/compare_run.json"])
  assert json.loads((dest / "cispo-lr1e-5-seed0/metrics.jsonl").read_text())["file"] == (
      "cispo-lr1e-5-seed0/metrics.jsonl")
  assert f"{dest}: the records of 5 folders of {workdir}" in capsys.readouterr().out


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda pid: ())(0)) < 2,
                    reason="pins jobs to 2 CPU cores")
def test_jobs_side_by_side_are_pinned_to_a_core_each_and_all_stop_cleanly(tmp_path):
  """--jobs=2: two jobs run at once, each on a core of its own; SIGTERM to the comparison
  reaches both, which finish their work (here: write a file), the queued third never starts,
  and the comparison exits 0 without going on."""
  import subprocess
  import sys
  job = tmp_path / "job.py"
  job.write_text(
      "import os, signal, sys, time\n"
      "stop = []\n"
      "signal.signal(signal.SIGTERM, lambda *a: stop.append(1))\n"
      f"base = {str(tmp_path)!r} + '/' + sys.argv[1]\n"
      "open(base + '.started', 'w').write(repr(sorted(os.sched_getaffinity(0))))\n"
      "while not stop: time.sleep(0.01)\n"
      "time.sleep(0.5)  # the rest of the iteration, then the checkpoint\n"
      "open(base + '.checkpoint', 'w').close()\n")
  parent = subprocess.Popen([sys.executable, "-c", (
      "import os, signal, sys, time\n"
      "from jaxdistill.experiments import jobs as layer\n"
      "pool = layer.Pool(2)\n"
      f"jobs = [pool.submit(layer.run_command, [sys.executable, {str(job)!r}, str(i)])\n"
      "        for i in range(3)]\n"
      f"jobs.append(pool.submit(open, {str(tmp_path / 'queued_ran')!r}, 'w'))\n"
      f"while not all(os.path.exists(os.path.join({str(tmp_path)!r}, f'{{i}}.started'))\n"
      "               for i in range(2)):\n"
      "  time.sleep(0.01)\n"
      "os.kill(os.getpid(), signal.SIGTERM)\n"
      "pool.result(jobs[0])\n"
      f"open({str(tmp_path / 'went_on')!r}, 'w').close()\n")], stdout=subprocess.PIPE,
      text=True)
  output = parent.communicate(timeout=120)[0]
  assert parent.returncode == 0 and "run the same command to resume" in output
  cores = [eval((tmp_path / f"{i}.started").read_text()) for i in range(2)]
  assert all(len(c) == 1 for c in cores) and cores[0] != cores[1]  # one core each, not shared
  assert all((tmp_path / f"{i}.checkpoint").exists() for i in range(2))  # waited for, not killed
  assert not (tmp_path / "2.started").exists()  # nothing starts after a stop
  assert not (tmp_path / "queued_ran").exists()  # queued work is not even called
  assert not (tmp_path / "went_on").exists()


def test_the_pool_runs_queued_work_by_priority_then_in_order():
  """A picked rate's test scores (priority -1) start before the sweeps queued earlier, while
  the machine still has the runs' checkpoints; equal priorities keep their order."""
  import threading

  from jaxdistill.experiments import jobs
  gate, order = threading.Event(), []
  pool = jobs.Pool(1)
  try:
    busy = pool.submit(gate.wait)  # holds the one worker while the rest is queued
    queued = [pool.submit(order.append, name, priority=priority) for name, priority in
              [("sweep a", 0), ("sweep b", 0), ("test x", -1), ("sweep c", 0), ("test y", -1)]]
    gate.set()
    pool.result(busy)
    for future in queued:
      pool.result(future)
  finally:
    pool.close()
  assert order == ["test x", "test y", "sweep a", "sweep b", "sweep c"]


def test_work_queued_when_a_sweep_finishes_comes_before_what_was_queued_earlier():
  """`Pool.after` runs its function in the worker that finishes the last of its futures,
  before that worker takes more work: a method's picked runs are scored first, not after the
  next sweep run a freed worker would otherwise start; a failed future reaches the waiter
  and the function is not called. Work submitted while the pool is held waits for it."""
  from jaxdistill.experiments import jobs
  order = []
  pool = jobs.Pool(1)
  try:
    with pool.held():  # the callbacks in place before any of the work runs
      sweep = [pool.submit(order.append, name) for name in ("sweep a1", "sweep a2")]
      later = pool.submit(order.append, "sweep b1")
      picked = pool.after(sweep, lambda: pool.submit(order.append, "test a", priority=-1))
      failed = pool.submit(lambda: 1 / 0)
      not_called = []
      after_failure = pool.after([failed], not_called.append, "called")
      assert not order  # held: no worker took work
    pool.result(pool.result(picked))
    pool.result(later)
    assert isinstance(after_failure.exception(timeout=10), ZeroDivisionError)
    assert not not_called
  finally:
    pool.close()
  assert order == ["sweep a1", "sweep a2", "test a", "sweep b1"]


def test_a_drain_lets_running_jobs_and_evaluations_finish_and_starts_no_training(tmp_path):
  """SIGUSR1 to the comparison's process group: its running job ignores it and finishes, an
  evaluation queued behind it still runs, a queued training job never starts, and the
  comparison exits 0 once nothing is left running instead of going on."""
  import subprocess
  import sys
  job = tmp_path / "job.py"
  job.write_text(
      "import sys, time\n"
      f"base = {str(tmp_path)!r} + '/' + sys.argv[1]\n"
      "open(base + '.started', 'w').close()\n"
      "time.sleep(1.0)  # the drain arrives while it runs\n"
      "open(base + '.done', 'w').close()\n")
  parent = subprocess.Popen([sys.executable, "-c", (
      "import os, signal, sys, time\n"
      "from jaxdistill.experiments import jobs as layer\n"
      "pool = layer.Pool(1)\n"
      f"running = pool.submit(layer.run_command, [sys.executable, {str(job)!r}, 'run'])\n"
      "def train():\n"
      "  layer.check_stopped(training=True)\n"
      f"  open({str(tmp_path / 'trained')!r}, 'w').close()\n"
      "training = pool.submit(train)\n"
      f"evaluation = pool.submit(layer.run_command, [sys.executable, {str(job)!r}, 'eval'])\n"
      f"while not os.path.exists({str(tmp_path / 'run.started')!r}):\n"
      "  time.sleep(0.01)\n"
      "os.killpg(os.getpgid(0), signal.SIGUSR1)  # the job too: it must not die of it\n"
      "pool.result(running)\n"
      "pool.result(training)\n"
      f"open({str(tmp_path / 'went_on')!r}, 'w').close()\n")], stdout=subprocess.PIPE,
      text=True, start_new_session=True)
  output = parent.communicate(timeout=120)[0]
  assert parent.returncode == 0 and "comparison drained" in output
  assert (tmp_path / "run.done").exists()  # the running job finished
  assert (tmp_path / "eval.done").exists()  # work that is not training still ran
  assert not (tmp_path / "trained").exists()  # no training job started after the drain
  assert not (tmp_path / "went_on").exists()
