"""The run's PNG: drawn from whatever the metrics hold, without warnings."""
import warnings

import pytest

from jaxdistill.train import metrics


@pytest.mark.parametrize("with_scores", [False, True])
def test_plot_run_draws_rewards_with_or_without_evaluations(tmp_path, with_scores):
  rows = [{"step": s, "reward": 0.1 * s} for s in range(1, 20)]
  if with_scores:
    rows.append({"step": 19, "eval_mean@16": 0.15, "val_mean@16": 0.14})
  path = str(tmp_path / "eval.png")
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. matplotlib's "No artists with labels" on an empty legend
    assert metrics.plot_run(rows, 16, path) == path
  assert (tmp_path / "eval.png").stat().st_size > 1000
  assert metrics.plot_run([], 16, str(tmp_path / "none.png")) is None
