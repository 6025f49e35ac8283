"""jaxdistill: tree-search distillation for language models, in JAX.

What is where (tests/test_layers.py keeps the imports free of cycles):
- configuration: `configs/` (every setting declared once), `validation`, `settings` (the
  frozen settings each layer takes);
- the devices and randomness every layer shares: `parallel` (the mesh, sharding, one printer
  per job), `streams` (a run's random streams), `cpu_threads` (set on import), `errors`;
- generation: `tokenization`, `stopping`, `sampling`; the model: `models/`;
- the task: `tasks/` (the Task interface, the tasks, and `tasks.rewards`, the one place a task
  meets a tokenizer);
- search and learning: `search/`, `rl/`, and `methods/` (one module per training method);
- where a run starts and how it is judged: `warmstart/`, `evaluate`;
- the training runtime: `train/`; the CLI: `main`;
- beside them: `bench/` (benchmarks) and `experiments/` (method comparisons).
"""

from jaxdistill import cpu_threads as _cpu_threads

__version__ = "0.1.0"

# several fake CPU devices: give XLA:CPU's thread pool room for overlapping collectives
# before jax starts its CPU backend (see cpu_threads.py)
_warning = _cpu_threads.configure()
if _warning:
  import warnings
  warnings.warn(_warning, RuntimeWarning, stacklevel=2)
