"""How a task declares sampling: the settings, the tool hook and the context error. A leaf module (stdlib only),
so the task interface can name these without importing any sampling implementation."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Tool = Callable[[str], "str | None"]


class PromptTooLong(ValueError):
    """A prompt plus the longest continuation does not fit the model's context."""


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    min_len: int = 0          # actions before the stop action is allowed
    max_len: int = 20         # actions; the stop is forced after this many
    max_tool_tokens: int = 8  # per tool call, counted into the context check

    def __post_init__(self):
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_len < 1 or self.min_len < 0 or self.min_len > self.max_len:
            raise ValueError(f"need 0 <= min_len <= max_len and max_len >= 1, got {self.min_len}, {self.max_len}")
