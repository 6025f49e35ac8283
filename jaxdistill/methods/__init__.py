"""The training methods, by name (`config.algo`). Each is one module; see `base.Method`."""

from __future__ import annotations

from jaxdistill.methods.base import Method
from jaxdistill.methods.deepsearch import DeepSearch
from jaxdistill.methods.mcts_distill import MctsDistill
from jaxdistill.methods.sampled import BestOfN, Cispo

METHODS: dict[str, Method] = {m.name: m for m in (MctsDistill(), Cispo(), BestOfN(), DeepSearch())}


def get(name: str) -> Method:
  """The method called `name`; a clear error naming the known ones otherwise."""
  if name not in METHODS:
    raise ValueError(f"algo must be one of {tuple(METHODS)}, got {name!r}")
  return METHODS[name]
