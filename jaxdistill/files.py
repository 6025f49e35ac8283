"""Files published whole.

Every record a run or an experiment reads back to decide what is done (a finished run's
result, an evaluation, a split, the metrics log after a resume trims it) is written beside
its path, under a name of this process's, then renamed over it. A reader, or a resume after
kill -9, finds the old file or the new one, never part of one, so a file's presence means it
is complete; two processes publishing the same path never write into one file.
"""

from __future__ import annotations

import json
import os
from typing import Callable, TextIO


def publish(path: str, write: Callable[[TextIO], object]) -> None:
  """write(f) to a file beside path (its directory made), then rename it over path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = f"{path}.{os.getpid()}.partial"
  try:
    with open(partial, "w") as f:
      write(f)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):  # write raised: leave no stray file behind
      os.remove(partial)


def write_json(path: str, value, indent: int | None = None) -> None:
  """value as JSON at path, published whole."""
  publish(path, lambda f: json.dump(value, f, indent=indent))
