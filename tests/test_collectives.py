"""Collectives on several CPU devices: the HLO check (divergence, threads blocked at once),
the thread pool jaxdistill gives XLA:CPU, and every training program checked compile-only."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

import xla_env
from jaxdistill import cpu_threads, parallel
from jaxdistill.bench import hlo_collectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a loop whose body gathers (known trip count), then an all-reduce; whether the all-reduce
# reads the loop's result is what the two variants differ in
_LOOP_THEN_REDUCE = """HloModule m, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p.1: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p.1 = (s32[], f32[8]) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %x = f32[8] get-tuple-element(%p.1), index=1
  %slice = f32[1] slice(%x), slice={[0:1]}
  %gathered = f32[8] all-gather(%slice), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  ROOT %t = (s32[], f32[8]) tuple(%i.1, %gathered)
}

ENTRY %main (x.0: f32[8], y.0: f32[3]) -> (f32[8], f32[3]) {
  %x.0 = f32[8] parameter(0)
  %y.0 = f32[3] parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8]) tuple(%zero, %x.0)
  %loop = (s32[], f32[8]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  %out = f32[8] get-tuple-element(%loop), index=1
  %summed = f32[3] all-reduce(REDUCED), channel_id=2, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  ROOT %r = (f32[8], f32[3]) tuple(%out, %summed)
}
"""


def test_an_all_reduce_beside_a_loop_of_gathers_blocks_two_threads():
  """Independent of the loop, the all-reduce can start while the loop's all-gathers wait:
  two threads per device; reading the loop's result orders it after the loop: one."""
  beside = hlo_collectives.analyze(_LOOP_THEN_REDUCE.replace("REDUCED", "%y.0"))
  assert (beside.collectives, beside.loops_with_collectives) == (2, 1)
  assert beside.blocked_threads == 2 and not beside.divergent
  assert len(beside.overlaps) == 1 and "summed" in beside.overlaps[0]
  after = hlo_collectives.analyze(
      _LOOP_THEN_REDUCE.replace("%summed = f32[3] all-reduce(REDUCED)",
                                "%head = f32[3] slice(%out), slice={[0:3]}\n"
                                "  %summed = f32[3] all-reduce(%head)"))
  assert after.blocked_threads == 1 and after.overlaps == []
  # a loop of unknown trip count holding the gather: a divergence
  unknown = hlo_collectives.analyze(_LOOP_THEN_REDUCE.replace("REDUCED", "%y.0").replace(
      ', backend_config={"known_trip_count":{"n":"4"}}', ""))
  assert unknown.divergent == ["all-gather gathered in loop loop of unknown trip count"]


def _compiled(fn, *args):
  mesh = parallel.make_mesh(8)
  sharded = parallel.shard_map(fn, mesh, in_specs=(P(parallel.ROWS),) * len(args),
                               out_specs=P())
  return jax.jit(sharded).lower(*args).compile().as_text()


def test_real_programs_two_loops_a_conditional_and_a_data_dependent_loop():
  """Programs jax compiles for 8 CPU devices: two independent fori_loops of all-gathers
  (each returns at launch) block two threads; a psum of one loop's result, one; a psum in a
  lax.cond branch or in a while_loop whose end each device decides diverges."""
  x = jnp.arange(64.0).reshape(8, 8)

  def gathers(rows, trips=3):
    return jax.lax.fori_loop(0, trips, lambda i, acc: acc + jax.lax.all_gather(
        acc[:1] * i, parallel.ROWS, tiled=True).sum(), rows[0])

  def beside(rows):
    return gathers(rows).sum() + gathers(jnp.cos(rows), trips=5).sum()

  def after(rows):
    return jax.lax.psum(gathers(rows).sum(), parallel.ROWS)

  def in_cond(rows):
    return jax.lax.cond(rows.sum() > 3.0, lambda v: jax.lax.psum(v, parallel.ROWS),
                        lambda v: v * 2.0, rows.sum())

  def in_while(rows):
    return jax.lax.while_loop(lambda v: v < rows.sum() + 100.0,
                              lambda v: jax.lax.psum(v, parallel.ROWS) + 1.0, 1.0)

  found = {name: hlo_collectives.analyze(_compiled(fn, x))
           for name, fn in (("beside", beside), ("after", after), ("in_cond", in_cond),
                            ("in_while", in_while))}
  assert found["beside"].blocked_threads == 2 and found["beside"].overlaps
  assert not found["beside"].divergent
  assert found["after"].blocked_threads == 1 and not found["after"].overlaps
  assert any("in conditional" in line for line in found["in_cond"].divergent)
  assert any("unknown trip count" in line for line in found["in_while"].divergent)


def test_the_pool_size_follows_the_fake_device_count(monkeypatch):
  assert cpu_threads.cpu_devices({}) == 1
  assert cpu_threads.cpu_devices({"XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                                               "--xla_force_host_platform_device_count=8"}) == 8
  assert cpu_threads.cpu_devices({"JAX_NUM_CPU_DEVICES": "4"}) == 4
  assert cpu_threads.pool_size(8, cores=2) == 8 * cpu_threads.THREADS_PER_DEVICE
  assert cpu_threads.pool_size(2, cores=64) == 64
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  monkeypatch.setattr(cpu_threads, "_backend_started", lambda: False)
  assert cpu_threads.configure(environ) is None
  assert environ["NPROC"] == str(cpu_threads.pool_size(8))
  small = dict(environ, NPROC="8")  # the user's own, too small: kept, with a warning
  assert "NPROC=8" in cpu_threads.configure(small) and small["NPROC"] == "8"
  monkeypatch.setattr(cpu_threads, "_backend_started", lambda: True)
  late = {"XLA_FLAGS": environ["XLA_FLAGS"]}
  assert "started before" in cpu_threads.configure(late) and "NPROC" not in late
  assert cpu_threads.configure({}) is None  # one device: nothing to do


def test_importing_jaxdistill_gives_xla_cpu_the_threads():
  """A fresh process with 8 fake devices and no NPROC: importing jaxdistill before jax's
  backend starts sets NPROC, and XLA:CPU's pools grow by it (more threads than without)."""
  code = ("import os, jaxdistill, jax; jax.devices(); "
          "print(os.environ.get('NPROC'), len(os.listdir('/proc/self/task')))")
  counts = {}
  for label, prelude in (("with", ""), ("without", "import jax; jax.devices(); ")):
    env = {k: v for k, v in xla_env.env(8).items() if k != "NPROC"}
    out = subprocess.run([sys.executable, "-c", prelude + code], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    nproc, threads = out.stdout.split()
    counts[label] = (nproc, int(threads), out.stderr)
  assert counts["with"][0] == str(cpu_threads.pool_size(8))
  assert counts["without"][0] == "None" and "NPROC=" in counts["without"][2]  # warned
  if os.cpu_count() < cpu_threads.pool_size(8):
    assert counts["with"][1] > counts["without"][1]


@pytest.mark.parametrize("algo", ["mcts_distill", "cispo", "best_of_n", "deepsearch"])
def test_no_training_program_diverges_or_needs_more_threads(algo):
  """Every method's iteration at fsdp 8, remat off and on, compiled (not run) on the suite's
  8 devices: no collective in a conditional or a loop of unknown trip count, and no more
  threads of a device blocked at once than cpu_threads gives. (fsdp 2 builds the same
  program over smaller groups; `python -m jaxdistill.bench.collectives` checks it too.)"""
  from jaxdistill.bench import collectives
  for fsdp in (8,):
    for remat in (False, True):
      row = collectives.check(algo, fsdp, remat, devices=8)
      assert row["collectives"] > 0, row
      assert row["divergent"] == [], row
      assert row["blocked_threads"] <= cpu_threads.THREADS_PER_DEVICE, row
