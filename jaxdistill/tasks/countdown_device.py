"""The Countdown reward inside the compiled program: token ids in, the Python verifier's
reward out, with no host callback.

Why it can be exact. The verifier (`countdown.reward`) looks at very little of the text: the
last `</answer>`, the last `<answer>` before it, and inside them digits, `+ - * /`,
parentheses and the spaces " \\t\\n\\r"; any other character inside the answer makes it
malformed. So a token is reduced, once on the host, to a short string over 26 classes
(the digits, the four operators, the parentheses, space, the letters and brackets of the tags,
and X for everything else), with runs rewritten where the verifier cannot tell them apart:
  * runs of X, of spaces, and X/space/'.' mixes holding an X or '.', become one X or one
    space ('.' is X: the verifier rejects it wherever it stands inside an answer);
  * a run of two or more operators keeps its first and last character (any two adjacent
    operators are an error, and no tag holds two);
  * a run of tag letters that cannot be part of a tag (not between '<' or '/' and '>', or
    not a piece of "answer" at the token's edge) becomes X.
Byte-level tokens work the same way: an ASCII byte decodes to itself wherever it stands, and
every other byte to a non-ASCII character, which is X. Qwen2.5's 151,665 tokens reduce to
941 distinct class strings of at most 16 classes (the character tokenizer's: at most 9).

On the device, a row's class strings are joined, the tags found by comparison, and the answer
checked with the verifier's grammar: the shunting-yard's errors are all local (what may follow
what) plus the parenthesis depth. A valid answer uses at most as many literals as the problem
has numbers, so it is evaluated by N-1 reductions, each of the operator that binds first
(deepest, then * / before + -, then leftmost), on exact fractions in int32. They cannot
overflow for a problem whose bound (`exact_bound`, from the numbers and the target) fits:
`device_tables` refuses problems that do not, and the caller keeps the Python reward then.
The dense score is the rational 1 - 2|t - v|/|t| rounded as Python rounds it (to float64, then
to float32 when stored), by long division in integers.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re

import numpy as np

# ----------------------------------------------------------------------------- classes

NONE = 0  # no character (padding)
DIGIT0 = 1  # classes 1..10 are the digits 0..9
PLUS, MINUS, TIMES, DIVIDE, LPAREN, RPAREN, SPACE = range(11, 18)
LT, GT = 18, 19
LETTERS = {"a": 20, "n": 21, "s": 22, "w": 23, "e": 24, "r": 25}
OTHER = 26

_CLASS = {str(d): DIGIT0 + d for d in range(10)} | {
    "+": PLUS, "-": MINUS, "*": TIMES, "/": DIVIDE, "(": LPAREN, ")": RPAREN, " ": SPACE,
    "<": LT, ">": GT} | LETTERS
_WORD = "answer"
START_TAG = [LT] + [LETTERS[c] for c in _WORD] + [GT]  # <answer>
END_TAG = [LT, DIVIDE] + [LETTERS[c] for c in _WORD] + [GT]  # </answer>
CAP = 1 << 30  # literal values saturate here (any larger literal matches no number)
INT32_MAX = (1 << 31) - 1
MAX_DIGITS = 4300  # Python's int() refuses longer literals: the verifier calls them malformed


def reduce_text(text: str) -> str:
  """A token's text as the representative characters of its classes, runs rewritten (see
  the module docstring); the verifier's reward of any text is unchanged by this."""
  s = "".join(ch if ch in _CLASS and ch != " " else (" " if ch in " \t\n\r" else "X")
              for ch in text)

  def letters(m):
    run, a, b = m.group(0), m.start(), m.end()
    left = "" if a == 0 else s[a - 1]
    right = "" if b == len(s) else s[b]
    if not left and not right:
      keep = run in _WORD
    elif not left and right == ">":
      keep = _WORD.endswith(run)
    elif left in ("<", "/") and left and not right:
      keep = _WORD.startswith(run)
    elif left in ("<", "/") and left and right == ">":
      keep = run == _WORD
    else:
      keep = False
    return run if keep else "X"

  s = re.sub("[answer]+", letters, s)
  s = re.sub("[X ]*X[X ]*", "X", s)
  s = re.sub(" +", " ", s)
  return re.sub(r"[-+*/]{2,}", lambda m: m.group(0)[0] + m.group(0)[-1], s)


def encode_classes(reduced: str) -> list[int]:
  return [_CLASS.get(ch, OTHER) for ch in reduced]


@dataclasses.dataclass(frozen=True, eq=False)
class TokenTable:
  """Each token id's class string: `patterns[pattern_of[id]]`, `lengths[pattern_of[id]]`
  classes long (pattern 0 is the empty string: ids the tokenizer does not know)."""

  pattern_of: np.ndarray  # [V] int32
  patterns: np.ndarray  # [U, width] uint8
  lengths: np.ndarray  # [U] int32

  @property
  def width(self) -> int:
    return self.patterns.shape[1]


def token_table(tokenizer) -> TokenTable:
  """The class strings of every token id of a tokenizer (decoded one at a time, special
  tokens kept, as `tokenization.decode` decodes a completion)."""
  size = len(tokenizer)
  index = {"": 0}
  pattern_of = np.zeros(size, np.int32)
  for i in range(size):
    text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    pattern_of[i] = index.setdefault(reduce_text(text), len(index))
  width = max(1, max(len(p) for p in index))
  patterns = np.zeros((len(index), width), np.uint8)
  lengths = np.zeros(len(index), np.int32)
  for text, row in index.items():
    classes = encode_classes(text)
    patterns[row, :len(classes)] = classes
    lengths[row] = len(classes)
  return TokenTable(pattern_of, patterns, lengths)


@functools.lru_cache(maxsize=8)
def cached_token_table(tokenizer) -> TokenTable:
  """`token_table`, once per tokenizer object (Qwen2.5's takes about 2 s)."""
  return token_table(tokenizer)


# ----------------------------------------------------------------------------- problems

def exact_bound(numbers, target) -> int:
  """The largest integer the device evaluation can form for this problem: over every subset
  of the numbers, the largest numerator and denominator its unreduced fraction arithmetic can
  reach, and |target| * denominator + numerator (the distance to the target)."""
  values = [abs(int(x)) for x in numbers]
  count = len(values)
  num = {1 << i: v for i, v in enumerate(values)}
  den = {1 << i: 1 for i in range(count)}
  for size in range(2, count + 1):
    for combo in itertools.combinations(range(count), size):
      s = sum(1 << i for i in combo)
      best_n = best_d = 0
      a = (s - 1) & s
      while a:  # every split of s into two non-empty parts, both orders
        b = s ^ a
        best_n = max(best_n, num[a] * den[b] + num[b] * den[a], num[a] * num[b])
        best_d = max(best_d, den[a] * den[b], den[a] * num[b])
        a = (a - 1) & s
      num[s], den[s] = best_n, best_d
  top_n, top_d = max(num.values(), default=0), max(den.values(), default=1)
  return max(top_n, top_d, abs(int(target)) * top_d + top_n, abs(int(target)),
             max(values, default=0))


class NotExact(ValueError):
  """A problem whose numbers or target are too large for the int32 device evaluation."""


def device_tables(problems) -> tuple[np.ndarray, np.ndarray]:
  """(numbers [P, N] int32, -1 where a problem has fewer than N; targets [P] int32) of
  Countdown problems; NotExact when one's bound does not fit int32."""
  width = max((len(p.numbers) for p in problems), default=1)
  numbers = np.full((max(1, len(problems)), max(1, width)), -1, np.int32)
  targets = np.zeros(max(1, len(problems)), np.int32)
  cache = {}
  for i, p in enumerate(problems):
    key = (tuple(sorted(p.numbers)), p.target)
    if key not in cache:
      cache[key] = exact_bound(p.numbers, p.target)
    if cache[key] > INT32_MAX or any(x < 0 or x >= CAP for x in p.numbers):
      raise NotExact(f"problem {p.numbers} -> {p.target} is too large for the device reward")
    numbers[i, :len(p.numbers)] = p.numbers
    targets[i] = p.target
  return numbers, targets


# ----------------------------------------------------------------------------- on the device

def _join(table: TokenTable, tokens):
  """Class strings of token rows [M, T] (-1: not part of the text) joined: [M, T * width]."""
  import jax.numpy as jnp
  rows, length = tokens.shape
  width = table.width
  vocab = table.pattern_of.shape[0]
  known = (tokens >= 0) & (tokens < vocab)
  pid = jnp.where(known, jnp.asarray(table.pattern_of)[jnp.clip(tokens, 0, vocab - 1)], 0)
  lengths = jnp.asarray(table.lengths)[pid]  # [M, T]
  start = jnp.cumsum(lengths, axis=1) - lengths
  chars = jnp.asarray(table.patterns)[pid].astype(jnp.int32)  # [M, T, width]
  offset = jnp.arange(width)
  size = length * width
  where = jnp.where(offset < lengths[..., None], start[..., None] + offset, size)
  out = jnp.zeros((rows, size), jnp.int32)
  row = jnp.broadcast_to(jnp.arange(rows)[:, None, None], where.shape)
  return out.at[row, where].set(chars, mode="drop")


def _find_last(seq, pattern, before=None):
  """Index of the last occurrence of `pattern` in each row of seq [M, C] (ending at or before
  `before` [M] when given), or -1."""
  import jax.numpy as jnp
  rows, size = seq.shape
  padded = jnp.pad(seq, ((0, 0), (0, len(pattern))), constant_values=-1)
  match = jnp.ones((rows, size), bool)
  for j, c in enumerate(pattern):
    match &= padded[:, j:j + size] == c
  index = jnp.arange(size)[None]
  if before is not None:
    match &= index + len(pattern) <= before[:, None]
  return jnp.max(jnp.where(match, index, -1), axis=1)


def _is_digit(seq):
  """Whether each class is one of the digits 0..9."""
  return (seq >= DIGIT0) & (seq < DIGIT0 + 10)


def _literal_values(seq):
  """At each digit, the value of the digit run up to it, or CAP when it has more than nine
  significant digits (no problem has such a number). A window of nine shifted adds plus a
  count of nonzero digits: cheap to compile, unlike a scan of saturating affine maps."""
  import jax
  import jax.numpy as jnp
  digit = _is_digit(seq)
  value_of = jnp.where(digit, seq - DIGIT0, 0)
  index = jnp.arange(seq.shape[1])[None]
  run_start = jax.lax.cummax(jnp.where(digit, -1, index), axis=1) + 1
  value = jnp.zeros_like(value_of)
  for k in range(9):
    shifted = jnp.pad(value_of, ((0, 0), (k, 0)))[:, :seq.shape[1]]
    value = value + jnp.where(index - k >= run_start, shifted, 0) * 10 ** k
  nonzero = jnp.cumsum(digit & (value_of > 0), axis=1)  # nonzero digits up to each position
  at = lambda i: jnp.where(i >= 0, jnp.take_along_axis(nonzero, jnp.maximum(i, 0), axis=1), 0)
  beyond = at(index - 9) - at(run_start - 1)  # nonzero digits more than nine places back
  return jnp.where((index - 9 >= run_start) & (beyond > 0), CAP, value)


def _exact_float32(numerator, denominator):
  """float32(float64(numerator / denominator)) exactly as Python and numpy round it, for
  |numerator| <= denominator < 2**31 (denominator > 0)."""
  import jax
  import jax.numpy as jnp
  negative = numerator < 0
  p = jnp.abs(numerator).astype(jnp.uint32)
  q = jnp.maximum(denominator, 1).astype(jnp.uint32)
  bits = 31 + 56  # the leading 1 is among the first 31 fraction bits (p/q >= 2**-31)

  def step(r, _):
    r = r * 2
    bit = r >= q
    return jnp.where(bit, r - q, r), bit

  remainder, digits = jax.lax.scan(step, p, None, length=bits)  # digits [bits, M]
  digits = digits.T.astype(jnp.uint32)
  lead = jnp.argmax(digits, axis=1)  # fraction bit of the leading 1 (value 2**-(lead+1))

  def take(offset, count):  # bits lead+offset .. lead+offset+count-1 as an integer
    index = lead[:, None] + offset + jnp.arange(count)[None]
    got = jnp.take_along_axis(digits, jnp.minimum(index, bits - 1), axis=1)
    weights = (jnp.uint32(1) << jnp.arange(count - 1, -1, -1, dtype=jnp.uint32))[None]
    return jnp.sum(got * weights, axis=1, dtype=jnp.uint32)

  high = take(0, 24)  # 24 bits, the first is 1
  low = take(24, 29)  # the next 29: together the 53 of a float64
  round_bit = take(53, 1)
  index = jnp.arange(bits)[None]
  sticky = (jnp.any((digits > 0) & (index >= lead[:, None] + 54), axis=1)
            | (remainder != 0))
  up = (round_bit == 1) & (sticky | ((low & 1) == 1))  # to nearest float64, ties to even
  low = low + up.astype(jnp.uint32)
  carry = low >> 29
  high = high + carry
  low = low & ((1 << 29) - 1)
  guard = (low >> 28) & 1  # then to nearest float32, ties to even
  rest = (low & ((1 << 28) - 1)) != 0
  up = (carry == 0) & (guard == 1) & (rest | ((high & 1) == 1))
  high = high + up.astype(jnp.uint32)
  value = jnp.ldexp(high.astype(jnp.float32), -(lead.astype(jnp.int32) + 1 + 23))
  value = jnp.where(p == q, 1.0, jnp.where(p == 0, 0.0, value))
  return jnp.where(negative, -value, value).astype(jnp.float32)


def rewards(table: TokenTable, numbers, targets, tokens, problems, *, dense: bool,
            malformed_reward: float = -1.0, invalid_reward: float = -1.0):
  """The verifier's reward [M] float32 of token rows [M, T] (-1 where a position is not part
  of the completion) for problems [M] (indices into numbers [P, N] and targets [P])."""
  import jax.numpy as jnp
  seq = _join(table, tokens)
  index = jnp.arange(seq.shape[1])[None]
  end = _find_last(seq, END_TAG)
  start = _find_last(seq, START_TAG, before=end)
  has_answer = (end >= 0) & (start >= 0)
  inside = has_answer[:, None] & (index >= start[:, None] + len(START_TAG)) & (
      index < end[:, None])
  error, kind, depth = _grammar(seq, inside, index)
  error, lits, used = _literals(seq, inside, kind, numbers, problems, error)
  n, d, error = _evaluate(seq, kind, depth, lits, used, error)
  target = jnp.asarray(targets)[problems]
  valid = has_answer & ~error
  correct = valid & (n == target * d)
  if not dense:
    return jnp.where(correct, 1.0, 0.0).astype(jnp.float32)
  scale = jnp.abs(target) * d
  gap = jnp.abs(target * d - n)
  near = (target != 0) & (gap < scale)
  score = _exact_float32(jnp.where(near, (scale - gap) - gap, 0), jnp.where(near, scale, 1))
  score = jnp.where(target == 0, jnp.where(n == 0, 1.0, -1.0), jnp.where(near, score, -1.0))
  out = jnp.where(valid, score, jnp.where(has_answer, malformed_reward, invalid_reward))
  return out.astype(jnp.float32)


def _grammar(seq, inside, index):
  """(error [M], kind [M, T], depth [M, T]): whether the answer breaks the grammar (a
  character outside it, a literal too long, an operand or operator out of turn, unbalanced
  parentheses, an empty answer or one ending in an operator), each position's kind (1
  literal, 2 '(', 3 ')', 4 operator, 0 none) and its parenthesis depth."""
  import jax
  import jax.numpy as jnp
  digit = _is_digit(seq)
  operator = (seq >= PLUS) & (seq <= DIVIDE)
  allowed = digit | operator | (seq == LPAREN) | (seq == RPAREN) | (seq == SPACE)
  error = jnp.any(inside & ~allowed, axis=1)
  previous_digit = jnp.pad(digit, ((0, 0), (1, 0)))[:, :-1]
  nondigit_at = jax.lax.cummax(jnp.where(digit, -1, index), axis=1)
  error |= jnp.any(inside & digit & (index - nondigit_at > MAX_DIGITS), axis=1)

  # the answer's tokens: 1 literal, 2 '(', 3 ')', 4 operator
  literal = inside & digit & ~previous_digit
  kind = jnp.where(literal, 1, 0)
  kind = jnp.where(inside & (seq == LPAREN), 2, kind)
  kind = jnp.where(inside & (seq == RPAREN), 3, kind)
  kind = jnp.where(inside & operator, 4, kind)
  is_token = kind > 0
  last_token = jax.lax.cummax(jnp.where(is_token, index, -1), axis=1)
  before = jnp.pad(last_token, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
  kind_before = jnp.where(before >= 0, jnp.take_along_axis(kind, jnp.maximum(before, 0),
                                                           axis=1), 0)
  operand_expected = (kind_before == 0) | (kind_before == 2) | (kind_before == 4)
  error |= jnp.any(((kind == 1) | (kind == 2)) & ~operand_expected, axis=1)
  error |= jnp.any(((kind == 3) | (kind == 4)) & operand_expected, axis=1)
  depth = jnp.cumsum(jnp.where(kind == 2, 1, 0) - jnp.where(kind == 3, 1, 0), axis=1)
  error |= jnp.any(depth < 0, axis=1)
  error |= depth[:, -1] != 0
  final = last_token[:, -1]
  kind_last = jnp.where(final >= 0, jnp.take_along_axis(kind, jnp.maximum(final, 0)[:, None],
                                                        axis=1)[:, 0], 0)
  error |= (kind_last != 1) & (kind_last != 3)  # empty, or ends with an operator or '('
  return error, kind, depth


def _literals(seq, inside, kind, numbers, problems, error):
  """(error, literals [M, N], used [M, N]): the answer's literals in order (-2 where
  unused), which must be the problem's numbers, each at most as often as it is given."""
  import jax.numpy as jnp
  rows = seq.shape[0]
  digit = _is_digit(seq)
  literal = kind == 1
  slots = numbers.shape[1]
  problem_numbers = jnp.asarray(numbers)[problems]  # [M, N]
  values = _literal_values(seq)
  run_end = digit & ~jnp.pad(digit, ((0, 0), (0, 1)))[:, 1:]
  literal_index = jnp.cumsum(literal, axis=1) - 1
  count = literal_index[:, -1] + 1
  error |= count > slots
  row = jnp.arange(rows)[:, None]
  put = jnp.where(inside & run_end & (literal_index < slots), literal_index, slots)
  lits = jnp.full((rows, slots), -2, jnp.int32).at[row, put].set(values, mode="drop")
  used = jnp.arange(slots)[None] < count[:, None]
  same_lit = ((lits[:, :, None] == lits[:, None, :]) & used[:, None, :]).sum(-1)
  same_num = (lits[:, :, None] == problem_numbers[:, None, :]).sum(-1)
  error |= jnp.any(used & (same_lit > same_num), axis=1)
  return error, lits, used


def _evaluate(seq, kind, depth, lits, used, error):
  """(numerator [M], denominator [M], error): the answer's value as a fraction, reduced
  operator by operator, the most tightly bound first (depth, then * and / over + and -,
  then left to right); a division by zero is an error."""
  import jax.numpy as jnp
  rows, slots = lits.shape
  row = jnp.arange(rows)[:, None]
  # operators in order, keyed by how tightly they bind
  ops = max(1, slots - 1)
  is_op = kind == 4
  op_index = jnp.cumsum(is_op, axis=1) - 1
  put = jnp.where(is_op & (op_index < ops), op_index, ops)
  precedence = jnp.where((seq == TIMES) | (seq == DIVIDE), 2, 1)
  key = depth * 4 + precedence
  op_kind = jnp.zeros((rows, ops), jnp.int32).at[row, put].set(seq, mode="drop")
  op_key = jnp.full((rows, ops), -1, jnp.int32).at[row, put].set(key, mode="drop")

  n, d = jnp.where(used, lits, 0), jnp.ones((rows, slots), jnp.int32)
  for _ in range(slots - 1):
    live = jnp.any(op_key >= 0, axis=1)
    j = jnp.argmax(op_key, axis=1)[:, None]
    take = lambda x, k: jnp.take_along_axis(x, jnp.minimum(k, x.shape[1] - 1), axis=1)[:, 0]
    n1, d1, n2, d2 = take(n, j), take(d, j), take(n, j + 1), take(d, j + 1)
    op = take(op_kind, j)
    rn = jnp.select([op == PLUS, op == MINUS, op == TIMES],
                    [n1 * d2 + n2 * d1, n1 * d2 - n2 * d1, n1 * n2], n1 * d2)
    rd = jnp.where(op == DIVIDE, d1 * n2, d1 * d2)
    error |= live & (op == DIVIDE) & (n2 == 0)
    slot = jnp.arange(slots)[None]
    shifted = lambda x: jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    merge = lambda x, r: jnp.where(slot < j, x, jnp.where(slot == j, r[:, None], shifted(x)))
    new_n, new_d = merge(n, rn), merge(d, rd)
    n = jnp.where(live[:, None], new_n, n)
    d = jnp.where(live[:, None], new_d, d)
    op_slot = jnp.arange(ops)[None]
    drop = lambda x, fill: jnp.where(op_slot < j, x, jnp.concatenate(
        [x[:, 1:], jnp.full((rows, 1), fill, x.dtype)], axis=1))
    op_kind = jnp.where(live[:, None], drop(op_kind, 0), op_kind)
    op_key = jnp.where(live[:, None], drop(op_key, -1), op_key)
  n, d = n[:, 0], d[:, 0]
  return jnp.where(d < 0, -n, n), jnp.abs(d), error


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceReward:
  """Countdown's device reward for one tokenizer: `tables(problems)` on the host (NotExact
  when a problem is too large), then `self(tables, tokens, problems)` inside a program; the
  tables may be constants or the program's arguments."""

  table: TokenTable
  dense: bool
  malformed_reward: float

  def tables(self, problems):
    return device_tables(problems)

  def __call__(self, tables, tokens, problems):
    numbers, targets = tables
    return rewards(self.table, numbers, targets, tokens, problems, dense=self.dense,
                   malformed_reward=self.malformed_reward)
