"""`--config configs/countdown.py[:preset]` in a source checkout: the presets the package
ships in `jaxdistill/configs/countdown.py` (where bare `--config countdown.py` finds them)."""

from jaxdistill.configs.countdown import PRESETS, get_config  # noqa: F401
