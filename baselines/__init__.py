"""Baselines: importing this package registers them as methods."""
from gfnbench.baselines import decoding, prompting  # noqa: F401
