"""Small token-level helpers shared by the sampler, the decoders, the teacher-forced passes and the methods."""
from __future__ import annotations

import torch
from torch import Tensor

from gfnbench.sampling.config import PromptTooLong


def few_allowed(n_allowed: int, vocab_size: int) -> bool:
    """Whether the output layer should run on the allowed tokens' rows only (a copy of those rows of the weight):
    worth it when they are few (arith: 140 of 49,152). When most tokens are allowed (continuation: 47,092) the
    whole layer runs and the disallowed columns are masked, sparing a 108 MB copy for 4% more FLOPs."""
    return 2 * n_allowed <= vocab_size


def masked_log_softmax(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """The policy's distribution: disallowed tokens get probability exactly 0."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def positions_from_mask(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def check_context(prompt_ids: list[list[int]], budget: int, context: int, texts: list[str]) -> None:
    for ids, text in zip(prompt_ids, texts):
        if len(ids) + budget > context:
            raise PromptTooLong(
                f"prompt of {len(ids)} tokens + up to {budget} generated tokens exceeds the model's context of "
                f"{context}: shorten the prompt (fewer shots) or lower max_len. Prompt starts: {text[:60]!r}")


def column_mask_bias(allowed: Tensor) -> Tensor:
    """[V] float: 0 where allowed, -inf elsewhere. Adding it masks [B, V] logits ~7x faster on this CPU than
    `masked_fill` with the broadcast [V] mask (0.3 vs 2.2 ms at 16 x 49k), with the same values."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed.bool(), float("-inf"))
