"""What a config field may hold, declared with its default (`configs/countdown.py`'s
`c.section.field = default, rule`): the rule types, and `Declared`, which collects the
defaults into the run's ConfigDict and the rules into `validation`'s schema, so a setting is
declared once. Light on purpose: the config file imports it, before jax is loaded; choices
from a registry (`registry`) import their module only when checked."""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Callable

import ml_collections
from ml_collections.config_dict import placeholder


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer >= low (and <= high)."""
  low: int
  high: int | None = None
  kind = int

  def check(self, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
      return "must be an integer"
    if value < self.low or (self.high is not None and value > self.high):
      return f"must be an integer in [{self.low}, {self.high}]" if self.high is not None else (
          f"must be an integer >= {self.low}")
    return None


@dataclasses.dataclass(frozen=True)
class Float:
  """A finite number >= low (> low when open), and <= high."""
  low: float
  high: float | None = None
  open_low: bool = False
  kind = float

  def check(self, value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      return "must be a finite number"
    too_low = value <= self.low if self.open_low else value < self.low
    if too_low or (self.high is not None and value > self.high):
      low = f"({self.low}" if self.open_low else f"[{self.low}"
      return (f"must be in {low}, {self.high}]" if self.high is not None else
              f"must be {'>' if self.open_low else '>='} {self.low}")
    return None


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `choices`: a tuple, or a function returning one (a registry's names, read when
  checked)."""
  choices: tuple | Callable[[], tuple]
  kind = str

  @property
  def options(self) -> tuple:
    return self.choices() if callable(self.choices) else self.choices

  def check(self, value) -> str | None:
    options = self.options
    return None if value in options else f"must be one of {', '.join(options)}"


@dataclasses.dataclass(frozen=True)
class Bool:
  kind = bool

  def check(self, value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


@dataclasses.dataclass(frozen=True)
class Text:
  kind = str

  def check(self, value) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def registry(module: str, name: str, ungrouped: bool = False) -> Choice:
  """The names of a registry (`module.name`, a dict or a tuple), imported when checked;
  ungrouped: only the entries whose `grouped` is False (advantage estimators)."""
  def names() -> tuple:
    table = getattr(importlib.import_module(module), name)
    return tuple(key for key in table if not (ungrouped and table[key].grouped))
  return Choice(names)


POSITIVE, COUNT = Int(1), Int(0)
PROBABILITY = Float(0.0, 1.0, open_low=True)  # top-p: (0, 1]
TEMPERATURE = Float(0.0)  # 0 is greedy
RATE = Float(0.0, open_low=True)


class Declared:
  """A section of declarations: `section.field = default, rule` declares a field (default
  None: a typed placeholder, which another part of the config fills), `section.name =
  Declared()` a subsection. A field declared twice is an error."""

  def __init__(self):
    object.__setattr__(self, "_entries", {})

  def __setattr__(self, name: str, value: Any) -> None:
    if name in self._entries:
      raise ValueError(f"config field {name!r} is declared twice")
    if not isinstance(value, Declared) and not (
        isinstance(value, tuple) and len(value) == 2 and hasattr(value[1], "check")):
      raise TypeError(f"config field {name!r}: declare it as `default, rule`")
    self._entries[name] = value

  def __getattr__(self, name: str):
    try:
      return self._entries[name]
    except KeyError:
      raise AttributeError(name) from None

  def config(self) -> ml_collections.ConfigDict:
    """The defaults as a ConfigDict (a None default: a placeholder of the rule's type)."""
    out = ml_collections.ConfigDict()
    for name, value in self._entries.items():
      if isinstance(value, Declared):
        out[name] = value.config()
      else:
        default, rule = value
        out[name] = placeholder(rule.kind) if default is None else default
    return out

  def rules(self, prefix: str = "") -> dict[str, Any]:
    """{'section.field': rule} of every declared field."""
    out = {}
    for name, value in self._entries.items():
      if isinstance(value, Declared):
        out |= value.rules(f"{prefix}{name}.")
      else:
        out[prefix + name] = value[1]
    return out
