"""jaxdistill: tree-search distillation for language models, in JAX."""

from jaxdistill import cpu_threads as _cpu_threads

__version__ = "0.1.0"

# several fake CPU devices: give XLA:CPU's thread pool room for overlapping collectives
# before jax starts its CPU backend (see cpu_threads.py)
_warning = _cpu_threads.configure()
if _warning:
  import warnings
  warnings.warn(_warning, RuntimeWarning, stacklevel=2)
