"""Jobs of a comparison run one at a time or side by side, each pinned to a CPU core of its
own, and stopped cleanly: a stop (SIGTERM, Ctrl-C) reaches every running job, which
finishes its iteration and writes its checkpoint; no queued job starts after it. A drain
(SIGUSR1) stops it at the next clean boundary instead: the running jobs finish, and so does
the evaluation work that follows them, but no training job starts; nothing is left half
done, which matters when a comparison goes on elsewhere from records alone (a half-trained
run's checkpoint does not travel, so it would start over)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading

from absl import app


class Stopped(Exception):
  """The comparison was stopped (SIGTERM or Ctrl-C): its jobs wrote their checkpoints."""


_RUNNING = set()  # the jobs running now (subprocess.Popen)
_STOPS = []  # the signals that stopped the comparison, first first
_DRAINING = []  # non-empty once a drain (SIGUSR1) was asked for
_CORES = None  # with --jobs > 1: a queue of the CPU cores free to pin a job to


def _forward(signum, frame):
  """A stop: passed on to every running job (which finishes its iteration and writes a
  checkpoint); no job starts after it."""
  del frame
  _STOPS.append(signum)
  for process in list(_RUNNING):
    process.send_signal(signum)


def _drain(signum, frame):
  """A drain: no training job starts after it; what runs (and the evaluations after it) ends."""
  del signum, frame
  if not _DRAINING:
    _DRAINING.append(True)
    print("draining: the running jobs and their evaluations finish, no training job starts; "
          "then the comparison exits (SIGTERM or Ctrl-C: stop now)", flush=True)


def _exit_stopped():
  print("comparison stopped; run the same command to resume it", flush=True)
  sys.exit(0 if _STOPS[0] == signal.SIGTERM else 130)


def run_command(cmd: list[str], log: str | None = None) -> int:
  """Run one job and wait for it; stopping the comparison stops the job cleanly.

  SIGTERM is passed on to the job and Ctrl-C reaches it anyway (same process group): the job
  finishes its iteration and writes a checkpoint (see jaxdistill.interrupts), and the
  comparison waits for that, then exits (0 after SIGTERM, 130 after Ctrl-C) instead of
  taking the stopped job for a finished one; in a worker thread the stop is raised as
  `Stopped` for the main thread to exit on. Running the same comparison again resumes it.
  With --jobs > 1 the job is pinned to a free CPU core and its output goes to `log`."""
  main_thread = threading.current_thread() is threading.main_thread()
  core = _CORES.get() if _CORES is not None else None
  try:
    if _STOPS:
      raise Stopped()

    def child_setup():  # a drain is the comparison's, not its jobs' (SIGUSR1 would kill them)
      signal.signal(signal.SIGUSR1, signal.SIG_IGN)
      if core is not None:
        os.sched_setaffinity(0, {core})
    output = open(log, "a") if log else None
    process = subprocess.Popen(cmd, preexec_fn=child_setup, stdout=output,
                               stderr=subprocess.STDOUT if output else None)
    _RUNNING.add(process)
    if _STOPS:  # stopped while it started
      process.send_signal(_STOPS[0])
    previous = signal.signal(signal.SIGTERM, _forward) if main_thread else None
    try:
      try:
        code = process.wait()
      except KeyboardInterrupt:
        _STOPS.append(signal.SIGINT)
        print("interrupted: waiting for the job to write its checkpoint (Ctrl-C again to "
              "abort)", flush=True)
        try:
          code = process.wait()
        except KeyboardInterrupt:
          process.kill()
          raise
    finally:
      if main_thread:
        signal.signal(signal.SIGTERM, previous)
      _RUNNING.discard(process)
      if output:
        output.close()
  finally:
    if core is not None:
      _CORES.put(core)
  if _STOPS:
    if main_thread:
      _exit_stopped()
    raise Stopped()
  return code


def check_stopped(training: bool = False):
  """Raises Stopped once the comparison has been stopped (or, for a training job, drained):
  work queued before the stop does not start (nor announce itself, nor make its workdir)."""
  if _STOPS or (training and _DRAINING):
    raise Stopped()


def _unless_stopped(fn, *args, **kwargs):
  check_stopped()
  return fn(*args, **kwargs)


class _Executor:
  """Worker threads that take work by priority (lower first), then in the order submitted;
  `shutdown` as concurrent.futures.ThreadPoolExecutor's."""

  def __init__(self, workers: int):
    self._queue, self._order = [], itertools.count()
    self._ready = threading.Condition()
    self._closed, self._held, self._busy = False, 0, 0
    self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
    for thread in self._threads:
      thread.start()

  def submit(self, priority: int, fn, *args, **kwargs) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    with self._ready:
      if self._closed:
        raise RuntimeError("work submitted after shutdown")
      heapq.heappush(self._queue, (priority, next(self._order), future, fn, args, kwargs))
      self._ready.notify()
    return future

  def _work(self):
    while True:
      with self._ready:
        while (not self._queue or self._held) and not self._closed:
          self._ready.wait()
        if not self._queue:
          return
        _, _, future, fn, args, kwargs = heapq.heappop(self._queue)
        self._busy += 1
      try:
        if not future.set_running_or_notify_cancel():
          continue
        try:
          result = fn(*args, **kwargs)
        except BaseException as error:  # the future carries it to whoever waits on it
          future.set_exception(error)
        else:
          future.set_result(result)  # its callbacks may queue more work: before idle
      finally:
        with self._ready:
          self._busy -= 1
          self._ready.notify_all()

  def wait_idle(self):
    """Until nothing is queued and no worker is working (work may be submitted meanwhile)."""
    with self._ready:
      while self._queue or self._busy:
        self._ready.wait(timeout=1.0)

  @contextlib.contextmanager
  def held(self):
    """No worker takes work inside: what is submitted inside is then taken by priority as a
    whole, and callbacks added to its futures inside are in place before any of it runs."""
    with self._ready:
      self._held += 1
    try:
      yield
    finally:
      with self._ready:
        self._held -= 1
        self._ready.notify_all()

  def shutdown(self, wait: bool = True, cancel_futures: bool = False):
    with self._ready:
      self._closed = True
      if cancel_futures:
        for item in self._queue:
          item[2].cancel()
        self._queue.clear()
      self._ready.notify_all()
    if wait:
      for thread in self._threads:
        thread.join()


class Pool:
  """--jobs worker threads, each running one job at a time (`run_command`), driven from the
  main thread: it submits work, waits for results, and on a stop lets every running job
  write its checkpoint before the comparison exits. Work runs by priority, then in the order
  submitted."""

  def __init__(self, jobs: int):
    global _CORES
    if jobs > 1:
      cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
      if len(cores) < jobs:
        raise app.UsageError(f"--jobs={jobs} pins each job to its own CPU core; this process "
                             f"may use {len(cores) or 'no'} core(s) it can pin to")
      _CORES = queue.Queue()
      for core in cores[:jobs]:
        _CORES.put(core)
    self.executor = _Executor(jobs)
    self.previous = signal.signal(signal.SIGTERM, _forward)
    self.previous_usr1 = signal.signal(signal.SIGUSR1, _drain)

  def submit(self, fn, *args, priority: int = 0, **kwargs) -> concurrent.futures.Future:
    """fn(*args, **kwargs) on a worker, unless the comparison has been stopped by then;
    before all queued work of a larger `priority`."""
    return self.executor.submit(priority, _unless_stopped, fn, *args, **kwargs)

  def held(self):
    """A context in which no worker takes work (`_Executor.held`)."""
    return self.executor.held()

  def after(self, futures: list[concurrent.futures.Future], fn, *args
            ) -> concurrent.futures.Future:
    """fn(*args) once every one of `futures` is done, called by the worker that finishes the
    last of them before it takes more work: what fn submits is queued ahead of whatever that
    worker would have taken next (a method's picked runs are scored while their checkpoints
    are here, not after the next sweep run that a freed worker would otherwise start). Its
    value, or the first failure among the futures (a cancelled one: Stopped) or in fn, comes
    in the returned future."""
    done = concurrent.futures.Future()
    left, lock = [len(futures)], threading.Lock()

    def one_done(_):
      with lock:
        left[0] -= 1
        if left[0]:
          return
      try:
        for future in futures:
          if future.cancelled():
            raise Stopped()
          if future.exception() is not None:
            raise future.exception()
        value = fn(*args)
      except BaseException as error:  # the returned future carries it to whoever waits
        done.set_exception(error)
      else:
        done.set_result(value)

    if not futures:
      left[0] = 1
      one_done(None)
    for future in futures:
      future.add_done_callback(one_done)
    return done

  def result(self, future: concurrent.futures.Future):
    """The future's value; a stop, a drain once everything it lets finish has finished, or
    a failed job once the running ones have finished, ends the comparison."""
    try:
      concurrent.futures.wait([future])
      if _DRAINING and not _STOPS and isinstance(future.exception(), Stopped):
        self.executor.wait_idle()  # queued training jobs refuse; evaluations run
        if not _STOPS:
          self.executor.shutdown(wait=True)
          print("comparison drained: the jobs that were running have finished and no "
                "training job started after the drain; run the same command to resume",
                flush=True)
          sys.exit(0)
    except KeyboardInterrupt:
      _STOPS.append(signal.SIGINT)  # Ctrl-C reached the jobs too (a second one aborts them)
      print("interrupted: waiting for the running jobs to write their checkpoints (Ctrl-C "
            "again to abort)", flush=True)
      try:
        self.executor.shutdown(wait=True, cancel_futures=True)
      except KeyboardInterrupt:
        for process in list(_RUNNING):
          process.kill()
        raise
    if _STOPS or isinstance(future.exception(), Stopped):
      self.executor.shutdown(wait=True, cancel_futures=True)
      _exit_stopped()
    if future.exception() is not None:  # a failed job: the others checkpoint and stop
      _forward(signal.SIGTERM, None)
      self.executor.shutdown(wait=True, cancel_futures=True)
    return future.result()

  def close(self):
    global _CORES
    self.executor.shutdown(wait=True)
    signal.signal(signal.SIGTERM, self.previous)
    signal.signal(signal.SIGUSR1, self.previous_usr1)
    _CORES = None
