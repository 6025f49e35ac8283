"""The comparison's report: paired differences with their standard errors, the per-method
summary, the markdown table and the learning-curve plot (pure functions of the run records
that experiments.compare collects)."""

import numpy as np


def mean_and_se(values) -> tuple[float, float]:
  """Mean and standard error of the mean (nan for fewer than two values)."""
  values = np.asarray(values, np.float64)
  se = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
  return float(values.mean()), float(se)


def problem_variance(table) -> float:
  """The problems' share of the variance of the mean of a seeds x problems table of
  differences, (MS_problem - MS_resid) / (S P) (two-way ANOVA, both factors random; 0 when
  the estimate is negative)."""
  table = np.asarray(table, np.float64)
  seeds, problems = table.shape
  by_problem = table.mean(0)
  ms_problem = seeds * by_problem.var(ddof=1)
  residual = table - table.mean(1, keepdims=True) - by_problem[None] + table.mean()
  ms_resid = (residual ** 2).sum() / ((seeds - 1) * (problems - 1))
  return max(ms_problem - ms_resid, 0.0) / (seeds * problems)


def paired(records: list[dict], method: str, other: str, k: int, temperature: str):
  """(mean, standard error, n, standard error with problems) over seeds of method's mean@k
  minus other's, seed by seed.

  The first standard error treats the test problems as fixed: every seed is scored on the
  same problems, so it says how sure we are of the difference on these problems. Where every
  run has per-problem scores (its test's "per_problem", one set of k samples each, in the
  same problem order in every run), the last adds the
  sampling of the problems, as in a two-way layout with seeds and problems both random:
  SE^2 + (MS_problem - MS_resid) / (S P), from the S x P per-problem differences. (MS_problem
  / (S P) alone, the spread of the problems' differences averaged over seeds, also holds the
  seed x problem residual, which SE^2 already counts; the unbiased form subtracts it once.)
  None where the scores are missing. With one seed the seeds' spread is unknown (the first
  is nan) and the last is the problems' alone: the SE of the one seed's mean over its
  problems, how sure we are of this seed's difference, not of the methods'."""
  score = lambda r: r["test"][temperature][f"mean@{k}"]
  mine = {r["seed"]: r for r in records if r["method"] == method}
  theirs = {r["seed"]: r for r in records if r["method"] == other}
  seeds = [s for s in sorted(mine) if s in theirs]
  diffs = np.array([score(mine[s]) - score(theirs[s]) for s in seeds])
  if len(diffs) == 0:
    return None
  mean, se = mean_and_se(diffs)
  with_problems = None
  per_problem = lambda r: r["test"].get("per_problem", r.get("per_problem"))
  if all(per_problem(r) is not None for s in seeds for r in (mine[s], theirs[s])):
    table = np.array([np.subtract(per_problem(mine[s]), per_problem(theirs[s]))
                      for s in seeds], np.float64)  # [S, P]
    if len(diffs) > 1:
      with_problems = float(np.sqrt(se ** 2 + problem_variance(table)))
    elif table.shape[1] > 1:
      with_problems = float(table[0].std(ddof=1) / np.sqrt(table.shape[1]))
  return mean, se, len(diffs), with_problems


def quarters(values) -> list[float]:
  """Means of the four consecutive quarters of a run's per-update values (its curve)."""
  return [float(np.mean(part)) for part in np.array_split(np.asarray(values, float), 4)
          if len(part)]


def explained_variance(value_loss, target_var) -> list[float]:
  """The value head's explained variance in each quarter of a run: 1 - its squared error
  over the returns' variance (each update's, unbiased), both summed over the quarter's
  updates. About 0: the head knows the mean return and nothing more; below 0: not even
  that; nan where the quarter's returns did not vary (or the run predates the metric)."""
  out = []
  for loss, var in zip(np.array_split(np.asarray(value_loss, float), 4),
                       np.array_split(np.asarray(target_var, float), 4)):
    if len(loss):
      out.append(float(1.0 - loss.sum() / var.sum()) if var.sum() > 0 else float("nan"))
  return out


def summarize(records: list[dict], k: int, temperatures: list[str]) -> list[dict]:
  """One row per method: per-seed scores, mean and std, paired differences (at the first
  temperature)."""
  rows = []
  t0 = temperatures[0]
  for method in dict.fromkeys(r["method"] for r in records):
    mine = sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"])
    row = {"method": method, "seeds": [r["seed"] for r in mine],
           "lr": mine[0].get("lr"), "tokens": float(np.mean([r["generated_tokens"] for r in mine])),
           "iterations": float(np.mean([r["iterations"] for r in mine])),
           "replayed": float(np.mean([r.get("replayed", 0) for r in mine])),
           "train_s": float(np.mean([r.get("train_s", 0.0) for r in mine]))}
    for t in temperatures:
      scores = np.array([r["test"][t][f"mean@{k}"] for r in mine])
      row[f"mean@{k}/T{t}"] = scores.tolist()
      row[f"pass@{k}/T{t}"] = float(np.mean([r["test"][t][f"pass@{k}"] for r in mine]))
    if all("reference" in r for r in mine):  # the reference's metric: mean@K on its problems
      reference = mine[0]["reference"]
      big_k = next(key for key in reference if key.startswith("mean@"))[len("mean@"):]
      row["reference"] = {"k": int(big_k), "problems": reference.get("problems"),
                          "mean": [r["reference"][f"mean@{big_k}"] for r in mine],
                          "pass": float(np.mean([r["reference"][f"pass@{big_k}"]
                                                 for r in mine]))}
    if all(r.get("reward") for r in mine):  # training reward over the run, mean over seeds
      row["reward_quarters"] = np.mean([quarters(r["reward"]) for r in mine], axis=0).tolist()
    if all(r.get("value_target_var") and np.isfinite(r["value_target_var"]).all()
           for r in mine):  # the value head (the search's guide), mean over seeds
      row["value_explained_quarters"] = np.mean(
          [explained_variance(r["value_loss"], r["value_target_var"]) for r in mine],
          axis=0).tolist()
    for other in ("cispo", "base"):
      if other != method:
        row[f"minus_{other}"] = paired(records, method, other, k, t0)
    rows.append(row)
  return rows


def deciding_se(d) -> float:
  """The standard error a paired difference (`paired`'s tuple) is judged by: the larger of
  the seeds-only and the problem-inclusive one, nan with one seed."""
  return d[1] if d[3] is None else max(d[1], d[3])


def counts(d) -> bool:
  """Whether a paired difference counts: it exceeds twice its deciding standard error,
  whichever side leads."""
  se = deciding_se(d)
  return d[2] > 1 and se > 0 and abs(d[0]) > 2 * se


def verdict(rows: list[dict]) -> dict:
  """What the table decides, from `summarize`'s rows: every method's paired difference with
  cispo and with the base model, whether it counts (`counts`), and a sentence that says which
  differences count, with the leader named first, or that none against cispo does. The
  verdict docs/results.md quotes under each table is this sentence."""
  pairs = []
  for r in rows:
    if r["method"] == "base":  # its difference with cispo is cispo's with it, said once
      continue
    for other in ("cispo", "base"):
      d = r.get(f"minus_{other}")
      if d is not None:
        pairs.append({"method": r["method"], "other": other, "difference": d[0],
                      "se": deciding_se(d), "seeds": d[2], "counts": counts(d),
                      "problems_se": d[3]})
  said = lambda p: (f"{p['method']} leads {p['other']}" if p["difference"] > 0 else
                    f"{p['other']} leads {p['method']}") + (
                        f" by {100 * abs(p['difference']):.1f} ± {100 * p['se']:.1f} points")
  # one seed: the seeds' spread is unknown, so no difference can be judged (nor called none)
  judged = [p for p in pairs if p["seeds"] > 1]
  against_cispo = [p for p in judged if p["other"] == "cispo"]
  decided = [said(p) for p in judged if p["counts"]]
  if against_cispo and not any(p["counts"] for p in against_cispo):
    decided.insert(0, "No method differs from cispo by more than 2 SE (" + "; ".join(
        f"{p['method']} {100 * p['difference']:+.1f} ± {100 * p['se']:.1f}"
        for p in against_cispo) + ")")
  single = [p for p in pairs if p["seeds"] < 2]
  if single:
    over_problems = lambda p: ("" if p["problems_se"] is None else
                               f" (± {100 * p['problems_se']:.1f} over its problems alone)")
    decided.append("with one seed the seeds' spread is unknown, so these are not judged: " +
                   ", ".join(f"{p['method']} minus {p['other']} "
                             f"{100 * p['difference']:+.1f}{over_problems(p)}"
                             for p in single))
  # method names keep their case: the sentence may begin with one
  return {"pairs": pairs, "summary": "; ".join(decided) + "." if decided else "Nothing to compare."}


def markdown(rows: list[dict], k: int, header: str, temperatures: list[str]) -> str:
  """The table: a row per method, seeds listed, paired differences with standard errors."""
  t0, others = temperatures[0], temperatures[1:]  # others: a column pair each (none if one)
  reference = [r["reference"] for r in rows if "reference" in r]  # its columns, if any
  pct = lambda xs: ", ".join(f"{100 * x:.1f}" for x in xs)
  stat = lambda xs: (f"{100 * np.mean(xs):.1f}% ± {100 * np.std(xs, ddof=1):.1f}"
                     if len(xs) > 1 else f"{100 * np.mean(xs):.1f}%")
  def diff(d):
    if d is None:
      return "-"
    if d[2] < 2:  # one seed: its difference, but no spread over seeds to say how sure it is
      return f"{100 * d[0]:+.1f} (1 seed: no SE" + (
          ")" if d[3] is None else f"; ± {100 * d[3]:.1f} over its problems alone)")
    return (f"{100 * d[0]:+.1f} ± {100 * d[1]:.1f}"
            + ("" if d[3] is None else f" (± {100 * d[3]:.1f} with problems)")
            + (" **(> 2 SE)**" if counts(d) else ""))
  lines = [header, "",
           f"| method | lr | mean@{k} T={t0} (mean ± std) | per seed | minus cispo (± SE) | "
           f"minus base (± SE) | pass@{k} T={t0} | "
           + "".join(f"mean@{k} T={t} | pass@{k} T={t} | " for t in others)
           + "".join(f"reference mean@{ref['k']} ({ref['problems']} problems) | "
                     f"reference pass@{ref['k']} | " for ref in reference[:1])
           + "tokens | replayed solutions (no tokens) | iterations | training time | "
           "training reward by quarter of the run | value head's explained variance by quarter |",
           "|---" * (13 + 2 * len(others) + 2 * bool(reference)) + "|"]
  curve = lambda r, key="reward_quarters": (" → ".join(f"{x:+.2f}" for x in r[key])
                                            if key in r else "-")
  for r in rows:
    lines.append(
        f"| {r['method']} | {r['lr'] if r['lr'] else '-'} | {stat(r[f'mean@{k}/T{t0}'])} | "
        f"{pct(r[f'mean@{k}/T{t0}'])} | {diff(r.get('minus_cispo'))} | "
        f"{diff(r.get('minus_base'))} | {100 * r[f'pass@{k}/T{t0}']:.1f}% | "
        + "".join(f"{stat(r[f'mean@{k}/T{t}'])} | {100 * r[f'pass@{k}/T{t}']:.1f}% | "
                  for t in others)
        + ("" if not reference else "- | - | " if "reference" not in r else
           f"{stat(r['reference']['mean'])} | {100 * r['reference']['pass']:.1f}% | ") +
        f"{r['tokens']:,.0f} | {r['replayed']:,.0f} | {r['iterations']:.0f} | "
        f"{r['train_s'] / 60:.1f} min | {curve(r)} | {curve(r, 'value_explained_quarters')} |")
  return "\n".join(lines) + "\n"


def learning_curves(records: list[dict]) -> tuple[float | None, dict]:
  """What `plot` draws, each on the same validation problems: the base model's mean on the
  learning curve's problems ("curve_validation", else its whole-split "validation"), and per
  method its runs' curves and their mean, as [points, 2] arrays of (generated tokens, score).
  A run's curve ends with its final validation, on the whole split (`train_run`); that point
  is left out, as the curve's other points score only the split's first
  eval.curve_problems problems."""
  base = [r.get("curve_validation", r["validation"]) for r in records if r["method"] == "base"]
  methods = {}
  for method in dict.fromkeys(r["method"] for r in records if r["method"] != "base"):
    curves = []
    for r in records:
      if r["method"] == method and r["curve"]:
        c = np.asarray(r["curve"], dtype=float)
        if c[-1, 1] == r["validation"]:
          c = c[:-1]
        if len(c):
          curves.append(c)
    if curves:
      length = min(len(c) for c in curves)
      methods[method] = (curves, np.mean([c[:length] for c in curves], axis=0))
  return (float(np.mean(base)) if base else None), methods


def plot(records: list[dict], sweep: dict, k: int, temperature: str, path: str,
         curve_problems: int = 0) -> None:
  """Validation mean@k against generated tokens on the learning curve's problems (the first
  `curve_problems` of the split, 0: unknown): each method's runs (thin), their mean, and the
  base model's level on the same problems."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  base, methods = learning_curves(records)
  if base is not None:
    ax.axhline(100 * base, color="k", linestyle="--", label="base")
  for i, (method, (curves, mean)) in enumerate(methods.items()):
    for c in curves:
      ax.plot(c[:, 0], 100 * c[:, 1], color=f"C{i}", alpha=0.25)
    ax.plot(mean[:, 0], 100 * mean[:, 1], color=f"C{i}", marker="o",
            label=f"{method} (lr {sweep.get(method, '?')})")
  ax.set_xlabel("generated tokens in training")
  problems = f" (its first {curve_problems} problems)" if curve_problems else ""
  ax.set_ylabel(f"validation mean@{k} (%), T={temperature}{problems}", fontsize=8)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
