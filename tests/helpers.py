"""Small builders several test files share."""
from __future__ import annotations

import torch


def digit_mask(tok) -> torch.Tensor:
    """Tokens made of digits, spaces and + - = , only, plus the stop token: an arithmetic-like vocabulary."""
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    for i in range(len(tok)):
        s = tok.decode([i])
        allowed[i] = bool(s) and all(c in " 0123456789+-=," for c in s)
    allowed[tok.eos_token_id] = True
    return allowed
