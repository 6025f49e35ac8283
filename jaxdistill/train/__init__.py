"""The training runtime: `train(...)` runs a method's iterations on a task.

- `program`: the jitted SPMD iteration (one program, or three timed phases);
- `cost`: what an iteration computes (forward tokens and FLOPs, per phase);
- `state`: the train state, initialised on the mesh or restored from a checkpoint;
- `evaluations`: the evaluations during and after training;
- `loop`: the prompts each iteration gets and the outer loop;
- `layout`, `checkpointing`, `runs`, `interrupts`: where the state lives on the mesh, orbax
  checkpoints, the run's record that a resume checks, and a clean stop on a signal.

The names below are imported when first read (PEP 562): importing one of the light modules
(`runs`, as the warm start does) must not import the loop, which imports the settings, which
import the warm start.
"""

_EXPORTS = {"train": "loop", "advantage_stats": "program", "build_iteration": "program",
            "build_phases": "program"}

__all__ = list(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'jaxdistill.train' has no attribute {name!r}")
  import importlib
  return getattr(importlib.import_module(f"jaxdistill.train.{_EXPORTS[name]}"), name)
