"""The comparison's learning-rate sweep: each method's grid, the end-of-grid check, how far
the pick leads the other rates on the validation problems, and the table.

Pure functions of flag values and finished runs, so that `compare` (which runs the jobs) stays
about running them, and these can be tested without running any.
"""

from __future__ import annotations

import math

import numpy as np
from absl import app

from jaxdistill.experiments.report import mean_and_se


def method_grids(methods, learning_rates, per_method) -> dict[str, list[str]]:
  """Each training method's learning-rate grid: `learning_rates`, or its own from
  `per_method` entries 'method=lr,lr,...'. Raises app.UsageError on a bad entry."""
  grids = {m: list(learning_rates) for m in methods if m != "base"}
  for entry in per_method:
    method, sep, rates = entry.partition("=")
    if not sep or method not in grids:
      raise app.UsageError(f"--method_learning_rates={entry}: expected METHOD=LR,LR,... with "
                           f"METHOD one of the compared training methods {sorted(grids)}")
    rates = [r.strip() for r in rates.split(",") if r.strip()]
    try:
      values = [float(r) for r in rates]
    except ValueError:
      values = []
    # `v > 0` is False for nan, so nan is refused with the non-positive rates; inf too
    if (not values or not all(v > 0 and math.isfinite(v) for v in values)
        or len(set(values)) != len(values)):
      raise app.UsageError(f"--method_learning_rates={entry}: give distinct positive rates")
    grids[method] = rates
  for method, rates in grids.items():
    if not rates:
      raise app.UsageError(f"{method}: no learning rate to try")
  return grids


def grid_edge(learning_rates, picked):
  """'smallest' or 'largest' when `picked` is an end of a sweep of 3 or more rates, else ''.

  A pick at the end of the grid says the grid did not bracket the best rate, so the method
  may be under-tuned against one whose pick is inside its grid.
  """
  rates = sorted(float(lr) for lr in learning_rates)
  if len(rates) < 3:
    return ""
  if math.isclose(float(picked), rates[0]):
    return "smallest"
  if math.isclose(float(picked), rates[-1]):
    return "largest"
  return ""


def sweep_table(grids: dict[str, list[str]], sweep_runs: list[dict], k: int, seeds,
                notes=()) -> str:
  """The markdown sweep table: a row per swept method (in `grids` order), a column per rate
  any of them tried (the union of the grids, ascending), '-' where a method did not try a
  rate; `sweep_runs` are {'method', 'lr', 'validation'} (validation pooled over `seeds`, an
  int or a list); `notes` go under the table."""
  columns = sorted({float(lr) for rates in grids.values() for lr in rates})
  who = (f"seed {seeds}" if isinstance(seeds, int) or len(seeds) == 1
         else f"seeds {', '.join(map(str, seeds))} pooled")
  who = who.replace("[", "").replace("]", "")
  lines = ["", f"Learning-rate sweep ({who}, validation mean@{k}):", "",
           "| method | " + " | ".join(f"{lr:g}" for lr in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for method in grids:
    scores = [(float(r["lr"]), r["validation"]) for r in sweep_runs if r["method"] == method]
    lines.append(f"| {method} | " + " | ".join(
        next((f"{100 * v:.1f}%" for lr, v in scores if math.isclose(lr, c)), "-")
        for c in columns) + " |")
  if notes:
    lines += [""] + list(notes)
  return "\n".join(lines) + "\n"


def pick_margins(runs: list[dict], picked: float) -> dict[float, tuple[float, float]]:
  """The picked rate's validation lead over each other rate of one method's sweep: {lr: (mean,
  standard error)} of the per-problem differences, from runs {'lr', 'per_problem'} scored on
  the same validation problems with the same sample keys (so the differences pair up)."""
  by_rate = {float(r["lr"]): np.asarray(r["per_problem"], np.float64) for r in runs}
  best = next(v for lr, v in by_rate.items() if math.isclose(lr, float(picked)))
  margins = {}
  for lr, scores in by_rate.items():
    if math.isclose(lr, float(picked)):
      continue
    if scores.shape != best.shape:
      raise ValueError(f"rates {picked:g} and {lr:g} were scored on different numbers of "
                       f"validation problems ({best.size} and {scores.size})")
    margins[lr] = mean_and_se(best - scores)
  return margins


def margin_note(method: str, picked: float, margins: dict[float, tuple[float, float]],
                problems: int) -> str:
  """One line under the sweep table: the pick's lead over each other rate (points, ± standard
  error), and a warning when the runner-up is within two standard errors, i.e. the validation
  split cannot tell the two rates apart."""
  if not margins:
    return ""
  leads = ", ".join(f"{lr:g} by {100 * m:+.1f} ± {100 * se:.1f}"
                    for lr, (m, se) in sorted(margins.items()))
  note = (f"{method}: the picked {float(picked):g} leads {leads} validation points (paired over "
          f"{problems} problems)")
  close = sorted(lr for lr, (m, se) in margins.items() if not m > 2 * se)
  if close:
    note += (f"; within two standard errors of {', '.join(f'{lr:g}' for lr in close)}: the "
             "validation problems cannot tell these rates apart (a larger "
             "task.validation_size can)")
  return note + "."


def best_rate(tried: dict[str, list[dict]]) -> str:
  """The rate (its text) whose runs have the best mean validation score, the first of equals:
  the comparison's pick, frozen before any test score is read. tried: {rate text: the
  picking seeds' run records, each with "validation"}."""
  return max(tried, key=lambda lr: float(np.mean([r["validation"] for r in tried[lr]])))


def pick_rate(method: str, grid: list[str], tried: dict[str, list[dict]], k: int,
              pickers: list[int]) -> tuple[str, list[dict], list[str]]:
  """A method's learning rate, picked on the validation score pooled over its picking seeds
  (frozen before any test score is read): (the grid's text of the pick, the sweep table's row
  of each rate, notes for under the table). tried: {rate text: the picking seeds' run
  records}, each with "validation" and, where the grid has more than one rate,
  "validation_per_problem" (to pair the rates problem by problem). Prints the sweep's line,
  the pick's margins and, as a warning, a pick at an end of its grid."""
  swept = len(grid) > 1
  pooled = [{"lr": runs[0]["lr"], "validation": float(np.mean([r["validation"] for r in runs])),
             "validation_seeds": [r["validation"] for r in runs],
             "per_problem": (np.mean([r["validation_per_problem"] for r in runs], axis=0)
                             if swept else None)} for runs in tried.values()]
  best = pooled[list(tried).index(best_rate(tried))]
  margins = pick_margins(pooled, best["lr"]) if swept else {}
  rows = [{"method": method, "lr": r["lr"], "validation": r["validation"],
           "validation_seeds": r["validation_seeds"]}
          | ({"pick_lead": margins[r["lr"]][0], "pick_lead_se": margins[r["lr"]][1]}
             if r["lr"] in margins else {}) for r in pooled]
  print(f"{method}: validation mean@{k} by learning rate (seeds {pickers} pooled) "
        + ", ".join(f"{r['lr']:g}: {100 * r['validation']:.1f}%" for r in pooled)
        + f" -> {best['lr']:g}", flush=True)
  notes = []
  if margins:
    notes.append(margin_note(method, best["lr"], margins, len(best["per_problem"])))
    print(notes[-1], flush=True)
  edge = grid_edge(grid, best["lr"])
  if edge:
    notes.append(f"{method}: the picked rate is the {edge} tried; the best may lie beyond "
                 "it: extend its grid (--method_learning_rates).")
    print("warning: " + notes[-1], flush=True)
  return best_rate(tried), rows, notes
