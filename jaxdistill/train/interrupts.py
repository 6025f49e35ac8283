"""Stop safely: SIGTERM (a preempted VM or TPU) or Ctrl-C ends the run after the current
iteration, with a checkpoint, instead of losing everything since the last one.

    with GracefulStop() as stop:
      for step in ...:
        ...
        if stop.agreed():   # every process sees the same answer at the same step
          save(); break

The first signal only sets a flag (and says so in one line); a second Ctrl-C aborts at once
(KeyboardInterrupt). Exit status: 0 after SIGTERM (the job may be restarted and resume), 130
after SIGINT, as shells report an interrupted command.
"""

from __future__ import annotations

import signal
import sys
import threading

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class GracefulStop:
  """Catches SIGTERM and SIGINT while active (main thread only; elsewhere it is inert)."""

  def __init__(self, announce=print):
    self.received: int | None = None
    self._announce = announce
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in EXIT_CODES:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: abort now
    if self.received is None:
      self.received = signum
      self._announce(f"received {signal.Signals(signum).name}: stopping after the current "
                     "iteration with a checkpoint (Ctrl-C again to abort now)")
      sys.stdout.flush()

  def agreed(self) -> bool:
    """Whether to stop now, the same answer on every process (one tiny allgather per call
    when there are several): a host that was signalled stops them all at this step."""
    import jax
    local = self.received is not None
    if jax.process_count() == 1:
      return local
    import numpy as np
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(self.received or 0))
    if not local and flags.max():
      self.received = int(flags.max())  # stop for the same reason as the signalled host
    return bool(flags.max())

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else ""

  @property
  def exit_code(self) -> int:
    return EXIT_CODES.get(self.received, 0)
