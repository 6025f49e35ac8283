"""Run configs shipped with the package: `--config countdown.py[:preset]` finds them from any
directory after any install (see `jaxdistill.main.resolve_config_argument`)."""
