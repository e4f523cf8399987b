"""Baselines: importing this package registers them as methods."""
from gfnbench.baselines import decoding, prompting  # noqa: F401
from gfnbench.baselines import sft, ppo  # noqa: F401
