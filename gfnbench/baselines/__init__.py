"""Baselines: importing this package registers them as methods."""
from gfnbench.baselines import decoding, flowrl, grpo, label_sft, mstep, ppo, prompting, sft, tb_vargrad  # noqa: F401
