"""The training runtime: `train(...)` runs a method's iterations on a task.

- `program`: the jitted SPMD iteration (one program, or three timed phases);
- `cost`: what an iteration computes (forward tokens and FLOPs, per phase);
- `state`: the train state, initialised on the mesh or restored from a checkpoint;
- `evaluations`: the evaluations during and after training;
- `loop`: the prompts each iteration gets and the outer loop;
- `layout`, `checkpointing`, `runs`, `interrupts`: where the state lives on the mesh, orbax
  checkpoints, the run's record that a resume checks, and a clean stop on a signal.
"""

from jaxdistill.train.loop import train
from jaxdistill.train.program import advantage_stats, build_iteration, build_phases

__all__ = ["train", "advantage_stats", "build_iteration", "build_phases"]
