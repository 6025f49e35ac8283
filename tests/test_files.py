"""Files published whole: a reader sees the old file or the new one, never part of one."""

import json
import os

import pytest

from jaxdistill.files import publish, write_json


def test_a_write_that_fails_leaves_the_old_file_and_no_stray_file(tmp_path):
  path = tmp_path / "result.json"
  write_json(str(path), {"score": 1})

  def half_then_fail(f):
    f.write('{"score": ')
    raise KeyboardInterrupt  # as a signal arriving mid-write

  with pytest.raises(KeyboardInterrupt):
    publish(str(path), half_then_fail)
  assert json.loads(path.read_text()) == {"score": 1}
  assert os.listdir(tmp_path) == ["result.json"]


def test_the_file_is_written_beside_its_path_and_renamed_over_it(tmp_path, monkeypatch):
  path = tmp_path / "splits.json"
  seen = []
  monkeypatch.setattr(os, "replace", lambda src, dst: seen.append((os.path.basename(src),
                                                                   open(src).read(), dst)))
  write_json(str(path), [1, 2], indent=2)
  assert seen == [(f"splits.json.{os.getpid()}.partial", "[\n  1,\n  2\n]", str(path))]
  assert not path.exists()  # nothing is written at the path itself before the rename


def test_a_resume_drops_the_metrics_rows_no_checkpoint_holds(tmp_path):
  from jaxdistill.train.metrics import MetricsLog
  log = MetricsLog(str(tmp_path))
  for step in (1, 2, 3, 4):
    log.write(step, {"reward": float(step)})
  said = []
  resumed = MetricsLog(str(tmp_path), resume_step=2, announce=said.append)
  assert [r["step"] for r in resumed.rows()] == [1, 2]
  assert said == [f"metrics: dropped 2 row(s) of {tmp_path}/metrics.jsonl after step 2, "
                  "which no checkpoint holds"]
  assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]
  assert MetricsLog(str(tmp_path)).rows() == []  # a fresh start keeps nothing


def test_the_directory_is_made(tmp_path):
  write_json(str(tmp_path / "made" / "result.json"), {"score": 1})
  assert json.loads((tmp_path / "made" / "result.json").read_text()) == {"score": 1}
