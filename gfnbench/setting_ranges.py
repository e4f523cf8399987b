"""Range checks for the settings dataclasses' `__post_init__`: a value out of range is refused when the settings
are built (preflight, before any model loads), in one line naming the field, instead of failing steps later.

Each check reads the named fields of a settings object; `None` (an unset optional field) passes. NaN fails every
check (no comparison with NaN is true). `settings.build` adds the method's name to the message.
"""
from __future__ import annotations


def _values(cfg, names: tuple[str, ...]):
    for name in names:
        value = getattr(cfg, name)
        if value is not None:
            yield name, value


def at_least(cfg, minimum: float, *names: str) -> None:
    """Counts and non-negative amounts: every named field >= minimum."""
    for name, value in _values(cfg, names):
        if not value >= minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def positive(cfg, *names: str) -> None:
    """Temperatures, learning rates, scales: every named field > 0."""
    for name, value in _values(cfg, names):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def probability(cfg, *names: str) -> None:
    """Shares and discounts: every named field in [0, 1]."""
    for name, value in _values(cfg, names):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")


def temperature_ramp(cfg, name: str = "reward_temperature") -> None:
    """(start, end, steps): two temperatures > 0 and a horizon >= 0."""
    start, end, steps = getattr(cfg, name)
    if not (start > 0 and end > 0 and steps >= 0):
        raise ValueError(f"{name} must be [start > 0, end > 0, steps >= 0], got [{start}, {end}, {steps}]")


def ordered_positive_pair(cfg, name: str) -> None:
    """(low, high) with 0 < low <= high, e.g. the range a tempered behaviour policy's temperature is drawn from."""
    low, high = getattr(cfg, name)
    if not 0 < low <= high:
        raise ValueError(f"{name} must be [low, high] with 0 < low <= high, got [{low}, {high}]")


def lora_shape(cfg) -> None:
    """LoRA rank and alpha: counts >= 1."""
    at_least(cfg, 1, "lora_rank", "lora_alpha")


INITS = ("base", "sft")     # where a reward-trained row's LoRA starts (gfnbench/warm_start.py)


def init_choice(cfg) -> None:
    """`init`: "base" (a fresh LoRA on the base model) or "sft" (the same seed's SFT adapter)."""
    if cfg.init not in INITS:
        raise ValueError(f"init must be 'base' (a fresh LoRA) or 'sft' (the same seed's SFT adapter), got {cfg.init!r}")
