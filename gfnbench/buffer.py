"""Per-prompt replay buffer (reference-paper.md §1.7): capped, deduplicated, reward-prioritised.

Items keep *untempered* log rewards, so replay stays valid while the reward temperature anneals.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Hashable

import editdistance
import torch


@dataclass(frozen=True, order=True)
class BufferItem:
    log_reward: float
    tokens: tuple[int, ...] = field(compare=False)
    payload: Any = field(compare=False, default=None)

    def __init__(self, tokens, log_reward, payload=None):
        object.__setattr__(self, "tokens", tuple(tokens))
        object.__setattr__(self, "log_reward", float(log_reward))
        object.__setattr__(self, "payload", payload)


class ReplayBuffer:
    def __init__(self, capacity: int = 50, dedup_tol: float = 0.25, sampling: str = "reward"):
        if sampling not in ("uniform", "reward"):
            raise ValueError(f"buffer sampling must be 'uniform' or 'reward', got {sampling!r}")
        if capacity < 1:
            raise ValueError("buffer capacity must be >= 1")
        self.capacity, self.dedup_tol, self.sampling = capacity, dedup_tol, sampling
        self._heaps: dict[Hashable, list] = {}
        self._tie = itertools.count()

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def size(self, key: Hashable) -> int:
        return len(self._heaps.get(key, ()))

    def keys(self) -> list[Hashable]:
        return list(self._heaps)

    def items(self, key: Hashable) -> list[BufferItem]:
        return [entry[2] for entry in self._heaps.get(key, ())]

    def add(self, key: Hashable, item: BufferItem) -> bool:
        """Store unless an identical or near-identical (edit distance < tol * total length) item is better."""
        if math.isnan(item.log_reward) or item.log_reward == math.inf:
            raise ValueError(f"buffer item for {key!r} has log reward {item.log_reward}")
        heap = self._heaps.setdefault(key, [])
        for idx, (_, _, old) in enumerate(heap):
            if old.tokens == item.tokens:
                return False
            limit = self.dedup_tol * (len(old.tokens) + len(item.tokens))
            if editdistance.eval(list(old.tokens), list(item.tokens)) < limit:
                if item.log_reward <= old.log_reward:
                    return False
                heap[idx] = (item.log_reward, next(self._tie), item)
                heapq.heapify(heap)
                return True
        entry = (item.log_reward, next(self._tie), item)
        if len(heap) < self.capacity:
            heapq.heappush(heap, entry)
            return True
        if item.log_reward <= heap[0][0]:
            return False
        heapq.heapreplace(heap, entry)
        return True

    def seed(self, key: Hashable, items: list[BufferItem]) -> int:
        return sum(self.add(key, it) for it in items)

    def sample(self, key: Hashable, n: int, generator: torch.Generator | None = None) -> list[BufferItem]:
        """n items with replacement: uniform, or proportional to exp(log R). Fewer than n stored under
        reward sampling: all of them (as the paper's code), so a sparse buffer is not over-replayed."""
        stored = self.items(key)
        if not stored:
            return []
        if self.sampling == "reward":
            if len(stored) < n:
                return stored
            probs = torch.softmax(torch.tensor([it.log_reward for it in stored], dtype=torch.float64), dim=0)
        else:
            probs = torch.full((len(stored),), 1.0 / len(stored), dtype=torch.float64)
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
        return [stored[i] for i in idx.tolist()]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "dedup_tol": self.dedup_tol, "sampling": self.sampling,
                "items": {k: [(it.tokens, it.log_reward, it.payload) for it in self.items(k)] for k in self._heaps}}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["capacity"], state["dedup_tol"], state["sampling"])
        for key, items in state["items"].items():
            for tokens, log_r, payload in items:
                self.add(key, BufferItem(tokens, log_r, payload))
