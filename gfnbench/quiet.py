"""Quiet runs: the known third-party warnings, tips and notices a gfnbench user cannot act on, silenced by their
exact messages (nothing else: a new or real warning still shows). `run` and `bench` call `silence_known_noise`
unless --verbose true. Standard library only, so it costs nothing at start-up.

Why each is noise here: transformers' deprecations (`past_key_values`, `is_gradient_checkpointing`) and torch's
`LeafSpec` one come from inside the libraries, not from anything a user passes; Lightning's litlogger tip and its
GPU/TPU lines say nothing the run's profile and record do not; the frozen base model is kept in eval mode on
purpose (no dropout), which Lightning's "modules in eval mode" notice flags; and a resumed or overwritten run
re-uses its train/ log folder, which Lightning's "logs directory exists" notice flags.
"""
from __future__ import annotations

import logging
import re
import warnings

# (category, regex matched at the start of the warning's message)
KNOWN_WARNINGS = (
    (FutureWarning, r"`past_key_values` is deprecated and will be removed in version [\d.]+ for `\w+\.forward`"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated and will be removed in v\d+"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (UserWarning, r"Found \d+ module\(s\) in eval mode at the start of training"),
    (UserWarning, r"Experiment logs directory .* exists and is not empty"),
)

_LIGHTNING_LINES = (r"💡 Tip: For seamless cloud logging and experiment tracking, try installing \[litlogger\]",
                    r"GPU available: (True|False)", r"TPU available: (True|False)")
# logger name -> regexes of the log lines it emits that are noise (matched at the start of the message)
KNOWN_LOG_LINES = {
    "lightning.pytorch.utilities.rank_zero": _LIGHTNING_LINES,
    "lightning.fabric.utilities.rank_zero": _LIGHTNING_LINES,
    "transformers.utils.generic": (r"`past_key_values`/`cache_params` are deprecated\. Use `cache` instead\.",),
}


class DropKnownLines(logging.Filter):
    """A logger filter that drops records whose message matches one of `patterns` (the rest pass)."""

    def __init__(self, patterns: tuple[str, ...]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def silence_known_noise() -> None:
    """Install the filters above (once per process); the loggers are named, never imported, so this imports
    neither Lightning nor transformers."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, patterns in KNOWN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownLines) for f in logger.filters):
            logger.addFilter(DropKnownLines(patterns))
