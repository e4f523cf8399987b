"""Baselines: importing this package registers them as methods."""
from gfnbench.baselines import decoding, prompting  # noqa: F401
from gfnbench.baselines import sft, ppo, label_sft, mstep  # noqa: F401
