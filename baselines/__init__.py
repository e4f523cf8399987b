"""Baselines: importing this package registers them as methods."""
from gfnbench.baselines import decoding, label_sft, mstep, ppo, prompting, sft  # noqa: F401  # noqa: F401
