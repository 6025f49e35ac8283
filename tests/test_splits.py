"""Splits disjoint by content and free of repeats, sizes the problem space cannot hold
refused with the largest possible size, and problems read from the reference's and
TinyZero's data files."""

import json

import pytest

from jaxdistill import validation
from jaxdistill.configs.countdown import get_config
from jaxdistill.errors import UsageError
from jaxdistill.tasks import countdown as cd


def _keys(split):
  return [p.key() for p in split]


def test_problem_space_holds_what_the_generator_makes_and_is_solvable():
  space = set(cd.problem_space(3))
  assert len(space) == 6926
  assert all(p.key() in space for p in cd.generate(300, seed=4, count=3))
  for numbers, target in sorted(space)[::97]:  # every problem in it has a solution
    assert cd.solve(numbers, target) is not None, (numbers, target)


def test_splits_are_distinct_disjoint_and_fill_the_whole_space():
  """Two-number problems (282 of them) asked for in full: the generator's draws, then the
  rest of the space, every problem exactly once over the three splits."""
  space = cd.problem_space(2)
  train, val, test = cd.split_problems(0, len(space) - 70, 40, 30, count=2)
  assert (len(train), len(val), len(test)) == (len(space) - 70, 40, 30)
  assert sorted(_keys(train) + _keys(val) + _keys(test)) == sorted(space)
  assert cd.split_problems(0, 100, 40, 30, count=2) == cd.split_problems(0, 100, 40, 30,
                                                                           count=2)
  with pytest.raises(cd.SplitTooLarge, match=f"at most {len(space) - 70} are left"):
    cd.split_problems(0, len(space) - 69, 40, 30, count=2)
  assert issubclass(cd.SplitTooLarge, UsageError)  # one line on the command line


def test_a_config_whose_splits_do_not_fit_is_refused_with_the_largest_size():
  config = get_config("tiny")
  assert not validation.problems(config)
  config.task.train_size = 20_000
  found = validation.problems(config)
  assert len(found) == 1 and "task.train_size=20000" in found[0]
  assert f"at most {6926 - 256 - 820}" in found[0]


def test_cached_splits_are_written_and_read_back(tmp_path):
  first = cd.cached_splits(str(tmp_path), 3, 50, 10, 20, count=3)
  assert [len(s) for s in first] == [50, 10, 20]
  for name, split in zip(cd.SPLITS, first):
    assert cd.read_jsonl(tmp_path / f"{name}.jsonl") == split
  (tmp_path / "train.jsonl").write_text("")  # read back, not regenerated...
  assert cd.cached_splits(str(tmp_path), 3, 50, 10, 20, count=3)[0] == []
  other = cd.cached_splits(str(tmp_path), 3, 60, 10, 20, count=3)  # ...unless settings differ
  assert len(other[0]) == 60 and cd.read_jsonl(tmp_path / "train.jsonl") == other[0]


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_data_files_of_the_reference_and_tinyzero(tmp_path):
  problems = cd.generate(40, seed=9)
  reference = tmp_path / "reference.jsonl"  # {"target": T, "input": [a, b, c, d]}
  rows = [{"target": p.target, "input": list(p.numbers)} for p in problems]
  _write_jsonl(reference, rows + rows[:5])  # repeats are dropped
  tinyzero = tmp_path / "tinyzero.jsonl"  # TinyZero's Countdown rows: target, nums
  _write_jsonl(tinyzero, [{"target": p.target, "nums": list(p.numbers)} for p in problems])
  for path in (reference, tinyzero):
    assert cd.read_problems(str(path))[:40] == problems
    task = cd.Countdown(data_path=str(path))
    assert task.capacity() is None
    train, val, test = task.splits(str(tmp_path / path.stem), 1, 25, 5, 10)
    keys = _keys(train) + _keys(val) + _keys(test)
    assert len(keys) == 40 and set(keys) == set(_keys(problems))
    assert task.splits(str(tmp_path / path.stem), 1, 25, 5, 10) == (train, val, test)
  with pytest.raises(cd.SplitTooLarge, match="at most task.train_size=25"):
    cd.Countdown(data_path=str(tinyzero)).splits(str(tmp_path / "big"), 1, 26, 5, 10)
  bad = tmp_path / "bad.jsonl"
  _write_jsonl(bad, [{"target": 3, "values": [1, 2]}])
  with pytest.raises(cd.DataError, match="bad.jsonl:1: not a Countdown problem"):
    cd.read_problems(str(bad))
  with pytest.raises(cd.DataError, match="no data file"):
    cd.read_problems(str(tmp_path / "missing.jsonl"))


def test_parquet_rows(tmp_path):
  pa = pytest.importorskip("pyarrow")
  import pyarrow.parquet as pq
  problems = cd.generate(12, seed=2)
  table = pa.table({"target": [p.target for p in problems],
                    "nums": [list(p.numbers) for p in problems]})
  pq.write_table(table, tmp_path / "train.parquet")
  assert cd.read_problems(str(tmp_path / "train.parquet")) == problems


def test_every_preset_s_splits_are_distinct_and_disjoint(tmp_path):
  """The splits each preset's runs write (presets with the same task settings share them)."""
  from jaxdistill import tasks
  from jaxdistill.configs.countdown import PRESETS
  seen = set()
  for preset in PRESETS:
    t = get_config(preset).task
    settings = (t.numbers, t.data_seed, t.train_size, t.validation_size, t.test_size)
    if settings in seen:
      continue
    seen.add(settings)
    task = tasks.from_config(get_config(preset))
    splits = task.splits(str(tmp_path / preset), t.data_seed, t.train_size, t.validation_size,
                         t.test_size)
    assert [len(s) for s in splits] == [t.train_size, t.validation_size, t.test_size]
    keys = [p.key() for split in splits for p in split]
    assert len(set(keys)) == len(keys), preset
    assert all(len(p.numbers) == t.numbers for split in splits for p in split)
  assert len(seen) == 3  # tiny, smoke, and the 4-number presets
