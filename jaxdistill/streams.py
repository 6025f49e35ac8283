"""A run's independent random streams. Each is the run's key folded with the stream's name,
so a change in how one stream is drawn from (another evaluation seed, another number of
search iterations) leaves the numbers of the others as they were. Data order needs no
stream: prompts are taken from the train split in order."""

from __future__ import annotations

import zlib

import jax

NAMES = ("rollout", "learner", "evaluation", "search", "filter")


def key(seed: int, name: str) -> jax.Array:
  """The typed key of stream `name` for `seed`."""
  if name not in NAMES:
    raise ValueError(f"unknown random stream {name!r}; one of {', '.join(NAMES)}")
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
