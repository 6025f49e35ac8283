"""Arithmetic expressions of the Countdown answer: tokenizer, parser, exact evaluation.

Grammar: non-negative integer literals, binary + - * /, parentheses, spaces. Nothing else:
no unary minus, decimals, `**`, `//` or names. Parsing is iterative (shunting-yard with an
operand/operator state machine), so 10,000-deep parentheses cost no recursion. Values are
exact `fractions.Fraction`s. Model text is never `eval`-ed.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

_OPERATORS = {"+": 1, "-": 1, "*": 2, "/": 2}
_SPACE = " \t\n\r"


class ExpressionError(ValueError):
  """Text that is not a valid expression, or one that divides by zero."""


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """The value of an expression and what it used."""

  value: Fraction
  literals: tuple[int, ...]  # integer literals in order of appearance
  integer_intermediates: bool  # every intermediate result (and the value) is an integer


def tokenize(text: str) -> list:
  """Literals as ints, operators and parentheses as one-character strings."""
  tokens, i, n = [], 0, len(text)
  while i < n:
    ch = text[i]
    if ch in _SPACE:
      i += 1
    elif "0" <= ch <= "9":  # ASCII digits only: str.isdigit() accepts '²' and other scripts
      j = i
      while j < n and "0" <= text[j] <= "9":
        j += 1
      if j < n and text[j] == ".":
        raise ExpressionError("decimal literals are not allowed")
      try:
        tokens.append(int(text[i:j]))
      except ValueError:  # past Python's int-from-string digit limit
        raise ExpressionError(f"a literal of {j - i} digits is too long") from None
      i = j
    elif ch in _OPERATORS or ch in "()":
      if ch in "*/" and i + 1 < n and text[i + 1] == ch:
        raise ExpressionError(f"'{ch}{ch}' is not allowed")
      tokens.append(ch)
      i += 1
    else:
      raise ExpressionError(f"unexpected character {ch!r}")
  return tokens


def to_postfix(tokens: list) -> list:
  """Shunting-yard to reverse Polish notation, checking the grammar on the way."""
  output, stack = [], []
  expect_operand = True
  for token in tokens:
    if isinstance(token, int):
      if not expect_operand:
        raise ExpressionError("two operands in a row")
      output.append(token)
      expect_operand = False
    elif token == "(":
      if not expect_operand:
        raise ExpressionError("'(' after an operand")
      stack.append(token)
    elif token == ")":
      if expect_operand:
        raise ExpressionError("')' where an operand was expected")
      while stack and stack[-1] != "(":
        output.append(stack.pop())
      if not stack:
        raise ExpressionError("unbalanced ')'")
      stack.pop()
    else:
      if expect_operand:
        raise ExpressionError(f"operator {token!r} where an operand was expected (no unary "
                              "minus)")
      while stack and stack[-1] != "(" and _OPERATORS[stack[-1]] >= _OPERATORS[token]:
        output.append(stack.pop())
      stack.append(token)
      expect_operand = True
  if expect_operand:
    raise ExpressionError("empty expression or trailing operator")
  while stack:
    token = stack.pop()
    if token == "(":
      raise ExpressionError("unbalanced '('")
    output.append(token)
  return output


def evaluate(text: str) -> Evaluation:
  """Exact value of an expression; raises ExpressionError when invalid."""
  return evaluate_postfix(to_postfix(tokenize(text)))


def evaluate_postfix(postfix: list) -> Evaluation:
  """Exact value of a postfix token list from `to_postfix`."""
  stack: list[Fraction] = []
  literals = []
  integral = True
  for token in postfix:
    if isinstance(token, int):
      literals.append(token)
      stack.append(Fraction(token))
      continue
    b, a = stack.pop(), stack.pop()
    if token == "+":
      value = a + b
    elif token == "-":
      value = a - b
    elif token == "*":
      value = a * b
    else:
      if b == 0:
        raise ExpressionError("division by zero")
      value = a / b
    integral = integral and value.denominator == 1
    stack.append(value)
  return Evaluation(value=stack[0], literals=tuple(literals), integer_intermediates=integral)
