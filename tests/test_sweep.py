"""The comparison's learning-rate sweep: grids per method, the end-of-grid flag, the table."""

import pytest
from absl import app

from jaxdistill.experiments import compare, evaluations, settings, sweep, training_runs


def test_a_pick_at_either_end_of_a_three_rate_sweep_is_flagged():
  rates = ["1e-5", "3e-5", "1e-4"]
  assert sweep.grid_edge(rates, 1e-5) == "smallest"
  assert sweep.grid_edge(rates, 1e-4) == "largest"
  assert sweep.grid_edge(rates, 3e-5) == ""
  assert sweep.grid_edge(["1e-4", "1e-5", "3e-5"], 1e-4) == "largest"  # order given is free
  assert sweep.grid_edge(["1e-5", "3e-5"], 1e-5) == ""  # two rates bracket nothing


def test_a_method_can_have_its_own_learning_rate_grid_and_bad_entries_are_refused():
  grids = sweep.method_grids(["base", "mcts_distill", "cispo"], ["1e-5", "3e-5", "1e-4"],
                             ["mcts_distill=3e-6, 1e-5,3e-5"])
  assert grids == {"mcts_distill": ["3e-6", "1e-5", "3e-5"], "cispo": ["1e-5", "3e-5", "1e-4"]}
  for bad in ["best_of_n=1e-5", "base=1e-5", "cispo", "cispo=", "cispo=1e-5,x",
              "cispo=0,1e-5", "cispo=1e-5,1e-05", "cispo=nan", "cispo=1e-5,nan", "cispo=inf",
              "cispo=-1e-5"]:
    with pytest.raises(app.UsageError):
      sweep.method_grids(["base", "mcts_distill", "cispo"], ["1e-5"], [bad])
  assert compare.method_grids is sweep.method_grids  # what compare's flags go through


def test_the_sweep_table_has_a_column_per_rate_any_method_tried():
  grids = {"mcts_distill": ["3e-6", "1e-5"], "cispo": ["1e-5", "1e-4"]}
  runs = [{"method": "mcts_distill", "lr": 3e-6, "validation": 0.15},
          {"method": "mcts_distill", "lr": 1e-5, "validation": 0.142},
          {"method": "cispo", "lr": 1e-05, "validation": 0.146},
          {"method": "cispo", "lr": 1e-4, "validation": 0.151}]
  lines = sweep.sweep_table(grids, runs, 16, 0, ["cispo: the picked rate is the largest"])
  lines = lines.split("\n")
  assert lines[1] == "Learning-rate sweep (seed 0, validation mean@16):"
  assert lines[3] == "| method | 3e-06 | 1e-05 | 0.0001 |"
  assert lines[4] == "|---|---|---|---|"
  assert lines[5] == "| mcts_distill | 15.0% | 14.2% | - |"
  assert lines[6] == "| cispo | - | 14.6% | 15.1% |"
  assert lines[8] == "cispo: the picked rate is the largest"


def test_compare_picks_the_rate_on_two_seeds_pooled_and_writes_the_sweep(monkeypatch,
                                                                         tmp_path):
  """compare.main with its jobs faked: each method's best validation rate, pooled over seeds
  0 and 1, is the one seed 2 trains at; only the picked rate's runs get test scores; a pick
  at a grid's end is flagged in the table; JSON has grids and per-problem test scores."""
  import json
  import types
  per_problem_noise = [0.25, -0.25, 0.0, 0.0]
  validation = {("mcts_distill", "3e-6"): 0.150, ("mcts_distill", "1e-5"): 0.142,
                ("mcts_distill", "3e-5"): 0.141, ("cispo", "1e-5"): 0.146,
                ("cispo", "3e-5"): 0.155, ("cispo", "1e-4"): 0.151}
  calls = []

  def record(method, seed, lr, score):
    return {"method": method, "seed": seed, "lr": lr, "generated_tokens": 1000,
            "iterations": 4, "train_s": 1.0, "validation": score,
            "curve": [(0, score), (1000, score)]}

  def with_test(record, common):
    tested.append((record["method"], record["seed"], record["lr"]))
    if (record["method"], record["seed"]) == ("cispo", 1):  # its checkpoint was lost: a
      record = record | {"validation": 0.125, "generated_tokens": 990,  # second run's row
                         "trained_again": {"repeated": False, "first_validation": 0.165,
                                           "first_generated_tokens": 1000}}
    score = record["validation"]
    return record | {"test": {"0.2": {"mean@4": score, "pass@4": 2 * score},
                              "per_problem": [score, score]}}

  def train_run(method, seed, lr, common, sweep=False):
    calls.append((method, seed, lr))
    assert sweep == (seed < 2)  # only the sweep's runs are scored problem by problem
    result = record(method, seed, float(lr), validation[method, lr] + 0.01 * seed)
    if sweep:  # 4 validation problems whose mean is the run's validation score
      result["validation_per_problem"] = [result["validation"] + d for d in per_problem_noise]
    return result

  tested = []
  monkeypatch.setattr(training_runs, "train_run", train_run)
  monkeypatch.setattr(training_runs, "with_test", with_test)
  monkeypatch.setattr(evaluations, "base_run", lambda seed, common: with_test(dict(
      record("base", seed, None, 0.14), generated_tokens=0, iterations=0, curve=[]), common))
  monkeypatch.setattr(settings, "eval_k", lambda: 16)
  monkeypatch.setattr(training_runs, "tokens_per_iteration", lambda method, common: 100.0)
  out = tmp_path / "table.md"
  monkeypatch.setattr(settings, "FLAGS", types.SimpleNamespace(
      preset="tiny", set=[], methods=["base", "mcts_distill", "cispo"], seeds=["0", "1", "2"],
      pick_seeds=2, learning_rates=["1e-5", "3e-5", "1e-4"],
      method_learning_rates=["mcts_distill=3e-6,1e-5,3e-5"], token_budget=1000,
      temperatures=["0.2"], eval_key_sets=1, workdir=str(tmp_path / "runs"), out=str(out),
      test_k=4, test_problems=3000, validation_problems=1000, reference_problems=820,
      equal="tokens", status=False, keep_records="", jobs=1))
  compare.main([])
  # every sweep first (no run of one waits on another), then each method's other seeds at
  # its pick
  assert calls == [(m, seed, lr) for m, lr in [("mcts_distill", "3e-6"),
                                               ("mcts_distill", "1e-5"),
                                               ("mcts_distill", "3e-5")] for seed in (0, 1)] + [
      (m, seed, lr) for m, lr in [("cispo", "1e-5"), ("cispo", "3e-5"), ("cispo", "1e-4")]
      for seed in (0, 1)] + [("mcts_distill", 2, "3e-6"), ("cispo", 2, "3e-5")]
  # test scores only for the base model and the picked rates, every seed; a pick's own runs
  # the moment its sweep finishes, ahead of the runs queued before them
  assert tested == [("base", s, None) for s in range(3)] + [
      ("mcts_distill", s, 3e-6) for s in (0, 1)] + [("cispo", s, 3e-5) for s in (0, 1)] + [
      ("mcts_distill", 2, 3e-6), ("cispo", 2, 3e-5)]
  table = out.read_text()
  assert ("learning rate per method picked on seeds 0, 1 pooled, from 1e-5, 3e-5, 1e-4 "
          "(mcts_distill: 3e-6, 1e-5, 3e-5) by validation mean@16 on 1,000 problems, frozen "
          "before any test score") in table
  assert "Learning-rate sweep (seeds 0, 1 pooled, validation mean@16):" in table
  # pooled over seeds 0 and 1 (seed s scores 0.01 s above the rate's value)
  assert "| mcts_distill | 15.5% | 14.7% | 14.6% | - |" in table
  assert "| cispo | - | 15.1% | 16.0% | 15.6% |" in table
  assert "mcts_distill: the picked rate is the smallest tried" in table
  # the per-problem differences are constant, so every lead is exact (standard error 0)
  assert ("mcts_distill: the picked 3e-06 leads 1e-05 by +0.8 ± 0.0, 3e-05 by +0.9 ± 0.0 "
          "validation points (paired over 4 problems).") in table
  assert "cispo: the picked 3e-05 leads 1e-05 by +0.9 ± 0.0, 0.0001 by +0.4 ± 0.0" in table
  assert "cispo: the picked rate" not in table
  assert ("cispo seed 1 (lr 3e-05): its checkpoint did not travel with its record; trained "
          "again for its test scores, on another machine: validation 16.5% -> 12.5%, "
          "generated tokens 1,000 -> 990; its row is the second run's") in table
  written = json.loads((tmp_path / "table.json").read_text())
  assert written["sweep"] == {"mcts_distill": "3e-06", "cispo": "3e-05"}
  assert written["grids"]["mcts_distill"] == ["3e-6", "1e-5", "3e-5"]
  # the verdict in the JSON is the one the table states
  assert {(p["method"], p["other"]) for p in written["verdict"]["pairs"]} == {
      ("mcts_distill", "cispo"), ("mcts_distill", "base"), ("cispo", "base")}
  assert (f"**Verdict** (a paired difference counts past 2 SE): "
          f"{written['verdict']['summary']}\n") in table
  leads = {(r["method"], r["lr"]): r.get("pick_lead") for r in written["sweep_runs"]}
  assert leads[("mcts_distill", 3e-6)] is None
  assert abs(leads[("mcts_distill", 1e-5)] - 0.008) < 1e-12
  assert all("validation_per_problem" not in r for r in written["runs"])
  assert all(len(r["test"]["per_problem"]) == 2 for r in written["runs"])
  assert (tmp_path / "table.png").exists()


def test_the_pick_s_lead_is_paired_problem_by_problem_and_a_close_call_is_said():
  # two rates scored on the same 4 problems: the pick leads by 0.25 on every problem but one
  runs = [{"lr": 1e-5, "per_problem": [0.5, 0.5, 0.25, 0.0]},
          {"lr": 3e-5, "per_problem": [0.25, 0.25, 0.0, 0.0]},
          {"lr": 1e-4, "per_problem": [0.5, 0.0, 0.25, 0.0]}]
  margins = sweep.pick_margins(runs, 1e-5)
  assert set(margins) == {3e-5, 1e-4}
  mean, se = margins[3e-5]  # differences 0.25, 0.25, 0.25, 0: sd 0.125, se 0.0625
  assert mean == 0.1875 and abs(se - 0.0625) < 1e-12
  mean, se = margins[1e-4]  # differences 0, 0.5, 0, 0: mean 0.125, sd 0.25, se 0.125
  assert mean == 0.125 and abs(se - 0.125) < 1e-12
  note = sweep.margin_note("cispo", 1e-5, margins, 4)
  assert note.startswith("cispo: the picked 1e-05 leads 3e-05 by +18.8 ± 6.2, 0.0001 by "
                         "+12.5 ± 12.5 validation points (paired over 4 problems)")
  # 18.75 > 2 x 6.25 separates; 12.5 < 2 x 12.5 does not
  assert "within two standard errors of 0.0001: the validation problems cannot tell" in note
  assert "3e-05:" not in note
  assert sweep.margin_note("cispo", 1e-5, {}, 4) == ""
  with pytest.raises(ValueError, match="different numbers of validation problems"):
    sweep.pick_margins(runs + [{"lr": 3e-4, "per_problem": [0.0]}], 1e-5)


def test_a_rate_given_alone_tests_each_run_as_it_finishes(monkeypatch, tmp_path):
  """One rate per method (frozen, as --equal=updates runs it) is picked already: each of the
  first seeds' runs is tested right after its training, while its checkpoint is here, not
  once the other seed has trained (a drain in between would leave it untested, and its
  checkpoint does not travel with the records), and it is tested once."""
  import types
  order = []

  def train_run(method, seed, lr, common, sweep=False):
    order.append(("train", method, seed))
    assert not sweep
    return {"method": method, "seed": seed, "lr": float(lr), "lr_text": lr,
            "generated_tokens": 1000, "iterations": 4, "train_s": 1.0,
            "validation": 0.1 + 0.01 * seed, "curve": [(1000, 0.1)]}

  def with_test(record, common):
    if "test" in record:  # as training_runs.with_test: a tested record is returned as it is
      return record
    order.append(("test", record["method"], record["seed"]))
    return record | {"test": {"0.2": {"mean@4": 0.1, "pass@4": 0.2},
                              "per_problem": [0.1, 0.1]}}

  monkeypatch.setattr(training_runs, "train_run", train_run)
  monkeypatch.setattr(training_runs, "with_test", with_test)
  monkeypatch.setattr(settings, "eval_k", lambda: 16)
  monkeypatch.setattr(settings, "FLAGS", types.SimpleNamespace(
      preset="tiny", set=[], methods=["cispo", "best_of_n"], seeds=["0", "1", "2"],
      pick_seeds=2, learning_rates=["1e-5", "3e-5", "1e-4"],
      method_learning_rates=["cispo=3e-5", "best_of_n=1e-5"], token_budget=0,
      temperatures=["0.2"], eval_key_sets=1, workdir=str(tmp_path / "runs"),
      out=str(tmp_path / "table.md"), test_k=4, test_problems=3000,
      validation_problems=1000, reference_problems=820, equal="updates", status=False,
      keep_records="", jobs=1))
  compare.main([])
  # the table says the rates were given, not picked from a grid they were never compared with
  assert ("learning rate per method given, not picked here (cispo: 3e-5, best_of_n: 1e-5; its "
          "validation mean@16 on 1,000 problems, seeds 0, 1 pooled, under the table), frozen "
          "before any test score") in (tmp_path / "table.md").read_text()
  assert order == [(kind, m, s) for m, s in [("cispo", 0), ("cispo", 1), ("best_of_n", 0),
                                             ("best_of_n", 1), ("cispo", 2),
                                             ("best_of_n", 2)]
                   for kind in ("train", "test")]
