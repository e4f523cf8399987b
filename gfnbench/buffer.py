"""Per-prompt replay buffer (docs/paper.md#replay-buffer): capped, deduplicated, reward-prioritised.

Items keep *untempered* log rewards, so priorities stay meaningful while the reward temperature anneals.
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import editdistance
import torch


@dataclass(frozen=True)
class BufferItem:
    """One stored trajectory. `tokens` (generated ids, tool insertions included) drive deduplication,
    `log_reward` (untempered, terminal) the priority; `payload` is whatever the caller needs to rebuild it."""

    tokens: tuple[int, ...]
    log_reward: float
    payload: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        object.__setattr__(self, "log_reward", float(self.log_reward))


# heap entries: (log_reward, insertion counter, item); the counter breaks ties without comparing items
_Entry = tuple[float, int, BufferItem]


class ReplayBuffer:
    """One min-heap per key (e.g. the prompt), capped at `capacity`, keyed on log reward."""

    def __init__(self, capacity: int = 50, dedup_tol: float = 0.25,
                 sampling: Literal["uniform", "reward"] = "reward"):
        if sampling not in ("uniform", "reward"):
            raise ValueError(f"buffer sampling must be 'uniform' or 'reward', got {sampling!r}")
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if dedup_tol < 0:
            raise ValueError(f"dedup_tol must be >= 0, got {dedup_tol}")
        self.capacity, self.dedup_tol, self.sampling = capacity, dedup_tol, sampling
        self._heaps: dict[Hashable, list[_Entry]] = {}
        self._counter = itertools.count()

    # ------------------------------------------------------------------ inspection
    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())

    def size(self, key: Hashable) -> int:
        return len(self._heaps.get(key, ()))

    def keys(self) -> list[Hashable]:
        return list(self._heaps)

    def items(self, key: Hashable) -> list[BufferItem]:
        """Stored items of `key` in heap order (deterministic given the insertion history)."""
        return [entry[2] for entry in self._heaps.get(key, ())]

    # ------------------------------------------------------------------ insertion
    def _is_near(self, a: tuple[int, ...], b: tuple[int, ...]) -> bool:
        """Token-level Levenshtein distance below dedup_tol * (len_a + len_b): the paper's near-duplicate test."""
        return editdistance.eval(list(a), list(b)) < self.dedup_tol * (len(a) + len(b))

    def add(self, key: Hashable, item: BufferItem) -> bool:
        """Insert `item` under `key`; True if it was stored.

        Exact token duplicates are skipped. If the item is a near-duplicate of stored ones, only the better
        survives: the new item is dropped unless it beats every near-duplicate, in which case they all go
        (so no two stored items are ever near-duplicates). Otherwise it is pushed, evicting the lowest reward
        when the heap is full (the new item itself is dropped if it would be that lowest one).
        """
        if math.isnan(item.log_reward) or item.log_reward == math.inf:
            raise ValueError(f"replay buffer: item for key {key!r} has log reward {item.log_reward}; "
                             f"must be finite or -inf")
        heap = self._heaps.setdefault(key, [])
        if any(old.tokens == item.tokens for _, _, old in heap):
            return False
        near = {i for i, (_, _, old) in enumerate(heap) if self._is_near(old.tokens, item.tokens)}
        if near:
            if any(heap[i][2].log_reward >= item.log_reward for i in near):
                return False
            heap[:] = [entry for i, entry in enumerate(heap) if i not in near]
            heapq.heapify(heap)
        entry = (item.log_reward, next(self._counter), item)
        if len(heap) < self.capacity:
            heapq.heappush(heap, entry)
            return True
        if item.log_reward <= heap[0][0]:
            return False
        heapq.heapreplace(heap, entry)
        return True

    def seed(self, key: Hashable, items: Iterable[BufferItem]) -> int:
        """Pre-fill with e.g. gold trajectories (same rules as add); returns how many were stored."""
        return sum(self.add(key, it) for it in items)

    # ------------------------------------------------------------------ sampling
    def sample(self, key: Hashable, n: int, generator: torch.Generator | None = None) -> list[BufferItem]:
        """n items drawn with replacement, uniformly or with probability proportional to exp(log_reward).

        Under "reward" sampling a key holding fewer than n items returns all of them once (the paper's code
        does this), so a sparse buffer is not replayed over and over. Empty or unknown key: [].
        """
        stored = self.items(key)
        if not stored or n <= 0:
            return []
        if self.sampling == "reward" and len(stored) < n:
            return list(stored)
        device = generator.device if generator is not None else "cpu"      # draws happen where the generator is
        log_r = torch.tensor([it.log_reward for it in stored], dtype=torch.float64, device=device)
        if self.sampling == "uniform" or not bool(torch.isfinite(log_r).any()):
            probs = torch.ones_like(log_r)                       # all -inf: no preference left to express
        else:
            probs = torch.softmax(log_r, dim=0)                  # max-shifted, so large |log R| is safe
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
        return [stored[i] for i in idx.tolist()]

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Plain Python structures (heap order kept) so a Lightning checkpoint can store the buffer."""
        return {"capacity": self.capacity, "dedup_tol": self.dedup_tol, "sampling": self.sampling,
                "items": {key: [(list(it.tokens), it.log_reward, it.payload) for it in self.items(key)]
                          for key in self._heaps}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore exactly what was saved (no re-deduplication: the saved heaps already obey the rules)."""
        self.__init__(state["capacity"], state["dedup_tol"], state["sampling"])
        for key, rows in state["items"].items():
            self._heaps[key] = [(float(r), next(self._counter), BufferItem(tuple(t), r, p)) for t, r, p in rows]
            heapq.heapify(self._heaps[key])
