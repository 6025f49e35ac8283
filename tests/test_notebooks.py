"""The notebooks run top to bottom (at the tiny budget CI uses) and produce what they show:
a learning curve, answers before and after training, the search-kernel table."""

import json
import os

import pytest

import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(name, tmp_path, monkeypatch):
  """Run notebooks/<name>.ipynb in tmp_path; the JSON its last cell prints."""
  import nbformat
  from nbclient import NotebookClient
  monkeypatch.setenv("JAXDISTILL_NOTEBOOK_BUDGET", "tiny")
  # the kernel sees the one CPU device of a notebook runtime, not the suite's 8 fake ones
  monkeypatch.setenv("XLA_FLAGS", xla_env.flags(1))
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
  return json.loads(text.strip().splitlines()[-1]), notebook


def test_notebooks_are_kept_without_outputs():
  import nbformat
  for name in ("quickstart", "search_kernel"):
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [] and cell.execution_count is None, name


@pytest.mark.slow
def test_quickstart_trains_and_answers(tmp_path, monkeypatch):
  result, notebook = _execute("quickstart", tmp_path, monkeypatch)
  assert len(result["curve"]["reward"]) == 2  # the smoke preset's 2 updates
  assert set(result["curve"]["eval"]) == {"0", "2"}  # before and after
  assert result["shown"] == 4
  assert set(result["solved"]) == {"before/sampled", "before/search", "after/sampled",
                                   "after/search"}
  assert all(0 <= n <= 4 for n in result["solved"].values())
  assert 0.0 <= result["eval_after"]["mean@4"] <= result["eval_after"]["pass@4"] <= 1.0
  images = [o for c in notebook.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, "the learning curve is plotted inline"


@pytest.mark.slow
def test_search_kernel_notebook_times_ours_and_mctx(tmp_path, monkeypatch):
  result, _ = _execute("search_kernel", tmp_path, monkeypatch)
  rows = result["rows"]
  assert {r["W"] for r in rows} == {1, 4}
  for row in rows:
    assert row["ours_sims_per_s"] > 0 and row["sims"] == row["W"] * row["I"]
    if row["W"] == 1:
      assert row["mctx_search_puct_sims_per_s"] > 0
