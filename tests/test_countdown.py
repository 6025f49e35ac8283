"""Countdown: generator, verifier (property tests), rewards, solver, CLI."""

import json
import subprocess
import sys
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from jaxdistill.tasks import countdown as cd
from jaxdistill.tasks.expression import ExpressionError, evaluate

NUMBERS, TARGET = (3, 5, 7, 2), 24
REWARDS = {-1.0, 0.0, 1.0}


def _answer(expr):
  return f"<step>thinking</step>\n<answer>{expr}</answer>"


def _assert_documented(completion, numbers=NUMBERS, target=TARGET):
  """Never raises; sparse in {0, 1}; dense in [-1, 1], -1 exactly when invalid."""
  grade = cd.grade(completion, numbers, target)
  sparse = cd.reward(completion, numbers, target, dense=False)
  dense = cd.reward(completion, numbers, target, dense=True)
  assert sparse in (0.0, 1.0)
  assert sparse == (1.0 if grade.correct else 0.0)
  assert -1.0 <= dense <= 1.0
  if not grade.valid:
    assert dense == -1.0 and sparse == 0.0
  return grade


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_arbitrary_unicode_never_raises(text):
  _assert_documented(text)
  _assert_documented(_answer(text))


_atoms = st.sampled_from(["3", "5", "7", "2", "13", "0", "+", "-", "*", "/", "(", ")", " ",
                          "**", "//", ".", "1.5", "x", "-3", "<answer>", "</answer>"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_atoms, max_size=60))
def test_expression_soup_matches_a_reference_evaluator(parts):
  """Random token soups: valid exactly when the grammar holds; values exact."""
  expr = "".join(parts)
  grade = _assert_documented(_answer(expr))
  inner = cd.extract_answer(_answer(expr))
  try:
    evaluation = evaluate(inner)
  except ExpressionError:
    assert not grade.valid
    return
  if grade.valid:
    assert grade.value == evaluation.value


@pytest.mark.parametrize("expr,valid,value", [
    ("3*7+5-2", True, Fraction(24)),  # all four numbers, each once
    ("(3+5)*(7-2)", True, Fraction(40)),
    ("7*(5-2)+3", True, Fraction(24)),
    ("3/2", True, Fraction(3, 2)),
    ("-3+5", False, None),  # unary minus
    ("3**2", False, None),
    ("7//2", False, None),
    ("1.5*2", False, None),
    ("x+3", False, None),
    ("3+3", False, None),  # 3 used twice
    ("3+11", False, None),  # foreign number
    ("7/(5-5)", False, None),
    ("7/(2-2)", False, None),
    ("(3+5", False, None),
    ("3+5)", False, None),
    ("", False, None),
    ("3 5", False, None),
    ("()", False, None),
    ("3*²", False, None),  # a non-ASCII digit
])
def test_verifier_cases(expr, valid, value):
  grade = _assert_documented(_answer(expr))
  assert grade.valid == valid, grade.reason
  if valid:
    assert grade.value == value


def test_sparse_and_dense_rewards():
  assert cd.reward(_answer("7*(5-2)+3"), NUMBERS, TARGET, dense=False) == 1.0
  assert cd.reward(_answer("7*(5-2)+3"), NUMBERS, TARGET) == 1.0
  assert cd.reward(_answer("3*5"), NUMBERS, TARGET, dense=False) == 0.0
  assert cd.reward(_answer("3*5"), NUMBERS, TARGET) == pytest.approx(1 - 2 * 9 / 24)
  assert cd.reward(_answer("7*5*3"), NUMBERS, TARGET) == -1.0  # |105-24|/24 > 1, clipped
  assert cd.reward("no answer", NUMBERS, TARGET) == -1.0
  assert cd.reward("no answer", NUMBERS, TARGET, invalid_reward=-0.5) == -0.5
  assert cd.reward(_answer("3*5"), NUMBERS, TARGET, distance_weight=1.0) == pytest.approx(
      1 - 9 / 24)


def test_grades_only_the_last_answer_and_never_the_prompt():
  prompt = cd.compact_prompt(NUMBERS, TARGET) + "<answer>7*(5-2)+3</answer>"
  completion = "<step>3 * 5 = 15</step>"
  assert cd.reward(completion, NUMBERS, TARGET) == -1.0  # the prompt's answer is not read
  two = "<answer>7*(5-2)+3</answer> then <answer>3*5</answer>"
  assert cd.grade(two, NUMBERS, TARGET).value == 15
  assert cd.extract_answer("<answer><answer>3+5</answer>") == "3+5"
  assert cd.extract_answer("</answer><answer>3") is None
  assert not cd.grade(prompt.replace("<answer>", ""), NUMBERS, TARGET).valid


def test_rules_require_all_and_integer_intermediates():
  assert cd.grade(_answer("3*7+5"), NUMBERS, 26).correct
  assert not cd.grade(_answer("3*7+5"), NUMBERS, 26, require_all=True).valid
  assert cd.grade(_answer("3/2*(7+5)+2-2"), (3, 2, 7, 5, 2, 2), 18).correct
  assert not cd.grade(_answer("3/2*(7+5)"), NUMBERS, 18, integer_intermediates=True).valid
  assert cd.grade(_answer("(3+7)/5*2"), NUMBERS, 4, integer_intermediates=True).correct


def test_deep_parentheses_and_huge_numbers():
  deep = "(" * 10_000 + "3" + ")" * 10_000
  assert cd.grade(_answer(deep), NUMBERS, 3).correct
  assert not cd.grade(_answer("(" * 10_000 + "3"), NUMBERS, 3).valid
  huge = "9" * 1000
  assert not _assert_documented(_answer(f"{huge}*{huge}")).valid
  assert evaluate(f"{huge}*{huge}").value == Fraction(int(huge) ** 2)
  assert not _assert_documented(_answer("9" * 5000)).valid  # past Python's digit limit


def test_generator_is_deterministic_and_splits_are_disjoint():
  assert cd.generate(50, seed=7) == cd.generate(50, seed=7)
  assert cd.generate(50, seed=7) != cd.generate(50, seed=8)
  train, test = cd.make_splits(seed=0, train_size=3000, test_size=300)
  assert len(train) == 3000 and len(test) == 300
  assert not {p.key() for p in train} & {p.key() for p in test}
  for p in train + test:
    assert len(p.numbers) == 4 and all(1 <= n <= 13 for n in p.numbers) and p.target >= 1


def test_solver_solves_5000_generated_problems_under_both_rules():
  for p in cd.generate(5000, seed=11):
    expr = cd.solve(p.numbers, p.target)
    assert expr is not None, p
    for require_all in (False, True):
      assert cd.reward(_answer(expr), p.numbers, p.target, require_all=require_all) == 1.0
  p = cd.generate(1, seed=12)[0]
  steps = cd.solution_steps(p.numbers, p.target)
  lines = steps.split("\n")
  assert all(line.startswith("<step>") and line.endswith("</step>") for line in lines[:-1])
  assert len(lines) == 4 and lines[-1].startswith("<answer>")
  assert cd.reward(steps, p.numbers, p.target, require_all=True,
                   integer_intermediates=True) == 1.0


def test_solver_edge_cases():
  assert cd.solve((1, 2, 3, 4), 1000) is None
  assert cd.grade(_answer(cd.solve((3, 3, 8, 8), 24)), (3, 3, 8, 8), 24).correct  # 8/(3-8/3)
  assert cd.solve((13, 1, 1, 1), 13) is not None


def test_jsonl_layouts_and_cli(tmp_path):
  (tmp_path / "nums.jsonl").write_text(json.dumps({"nums": [1, 2, 3, 4], "target": 10}) + "\n")
  assert cd.read_jsonl(str(tmp_path / "nums.jsonl")) == [cd.Problem((1, 2, 3, 4), 10)]
  (tmp_path / "bad.jsonl").write_text('{"target": 3}\n')
  with pytest.raises(ValueError, match="bad.jsonl:1"):
    cd.read_jsonl(str(tmp_path / "bad.jsonl"))
  out = subprocess.run([sys.executable, "-m", "jaxdistill.tasks.countdown",
                        f"--out={tmp_path}/data", "--train_size=200", "--test_size=50"],
                       capture_output=True, text=True, check=True).stdout
  assert "median" in out and "p90" in out and "max" in out
  train = cd.read_jsonl(str(tmp_path / "data" / "train.jsonl"))
  test = cd.read_jsonl(str(tmp_path / "data" / "test.jsonl"))
  assert len(train) == 200 and len(test) == 50


def test_chat_prompt_uses_the_template(tmp_path):
  from jaxdistill.tokenization import build_char_tokenizer
  tokenizer = build_char_tokenizer(str(tmp_path))
  text = cd.chat_prompt(tokenizer, NUMBERS, TARGET)
  assert "Numbers: 3 5 7 2" in text and text.endswith("<|assistant|>")
  assert cd.compact_prompt(NUMBERS, TARGET) == "<|user|>Numbers: 3 5 7 2\nTarget: 24\n<|assistant|>"
