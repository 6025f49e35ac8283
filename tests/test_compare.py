"""The comparison table: spread over seeds, tokens and times per method."""

import numpy as np

from jaxdistill.experiments import compare


def _record(method, seed, score, tokens, wall):
  return {"method": method, "seed": seed, "generated_tokens": tokens, "iterations": 4,
          "train_s": wall / 2, "wall_s": wall, "score": {"mean@16": score, "pass@16": 2 * score}}


def test_summary_is_mean_and_sample_std_over_seeds():
  records = [_record("base", 0, 0.10, 0, 60), _record("base", 1, 0.14, 0, 60),
             _record("cispo", 0, 0.20, 1000, 300), _record("cispo", 1, 0.30, 1200, 360)]
  rows = {r["method"]: r for r in compare.summarize(records, 16)}
  assert list(rows) == ["base", "cispo"]
  assert np.isclose(rows["cispo"]["mean"], 0.25) and rows["cispo"]["seeds"] == 2
  assert np.isclose(rows["cispo"]["std"], np.std([0.2, 0.3], ddof=1))
  assert rows["cispo"]["tokens"] == 1100 and rows["cispo"]["wall_s"] == 330
  assert (rows["base"]["min"], rows["base"]["max"]) == (0.10, 0.14)
  table = compare.markdown(compare.summarize(records, 16), 16, "header")
  lines = table.splitlines()
  assert lines[0] == "header" and len(lines) == 6
  assert lines[-1].startswith("| cispo | 25.0% ± 7.1 (n=2) | 20.0-30.0% | 50.0% | 1,100 |")


def test_importing_the_script_defines_no_flags_that_clash_with_main():
  import jaxdistill.main  # noqa: F401  (defines --workdir, as compare's CLI does)
  from absl import flags
  assert "workdir" in flags.FLAGS and "token_budget" not in flags.FLAGS
