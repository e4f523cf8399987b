"""Example task for "Adding a task" in docs/contributing.md: write three digits in ascending order.

Run it with any method: `gfnbench run --task examples/sort_digits.py --method gflownet --profile smoke`.
The reward needs no model: log R(text) = -(character edit distance to the sorted digits), so the GFlowNet's
target puts most mass on the right answer and the rest on near misses.
"""
from __future__ import annotations

import random

import editdistance
import torch
from torch import Tensor

from gfnbench.tasks.base import Example, Task, TrainingDefaults, register_task, token_mask


def make_examples(count: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        digits = [rng.randint(0, 9) for _ in range(3)]
        out.append(Example(id=f"{seed}-{i}", question=" ".join(map(str, digits)),
                           answer=" ".join(map(str, sorted(digits)))))
    return out


@register_task("sort_digits")
class SortDigits(Task):
    description = "write three digits in ascending order (the example task of docs/contributing.md)"
    data_source = "synthetic (seeded)"
    min_len, max_len, eval_max_len = 1, 8, 8
    eval_samples = 4
    opt_in_methods = ("sft",)          # it has gold targets, so SFT applies too
    metric_directions = {"exact": "higher", "edit_distance": "lower"}
    training = TrainingDefaults(behaviour_mix=(0.5, 0.5, 0.0))

    def __init__(self):
        self.splits = {"train": make_examples(20, 0), "val": make_examples(5, 1), "test": make_examples(5, 2)}

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"sort_digits has splits {', '.join(self.splits)}; got {split!r}")
        return self.splits[split]

    def prompt(self, ex: Example) -> str:
        return f"Question: sort {ex.question} Answer:"

    def target(self, ex: Example) -> str:
        return " " + ex.answer

    def allowed_tokens(self, tokenizer) -> Tensor:
        mask = token_mask(tokenizer, lambda text: text != "" and set(text) <= set("0123456789 "))
        mask[self.stop_id(tokenizer)] = True
        return mask

    def log_reward(self, model, tokenizer, traj, examples: list[Example]) -> Tensor:
        ends = traj.state_ends()                                   # [B, L+1] state tokens in each prefix
        out = torch.zeros(ends.shape)
        for b, g in enumerate(traj.group.tolist()):
            for j in range(int(traj.lengths[b]) + 1):
                text = tokenizer.decode(traj.state_ids[b, : ends[b, j]].tolist(), skip_special_tokens=True)
                out[b, j] = -float(editdistance.eval(text.strip(), examples[g].answer))
        out[:, : self.min_len] = float("-inf")                     # the sampler cannot stop before min_len
        return out

    def score(self, texts: list[str], ex: Example) -> dict[str, float]:
        distances = [editdistance.eval(t.strip(), ex.answer) for t in texts]
        return {"exact": sum(d == 0 for d in distances) / len(texts),
                "edit_distance": sum(distances) / len(texts)}
