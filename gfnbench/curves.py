"""Learning curves: a trained method's metric against reward evaluations and wall-clock time, during training.

A final number says where a run ended; the curve says whether it was still moving, which budget comparisons
need. The probe is the task's `curve_metrics` (cheap, e.g. rng's exact TV by enumeration), called every
`every` training batches and once at the end. Batches, not optimizer steps, are counted, so GFlowNet (one
prompt's samples per batch) and PPO (one rollout per batch, several optimizer steps on it) share an x axis:
reward evaluations = batches x samples scored per batch.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import lightning as L


class LearningCurve(L.Callback):
    def __init__(self, probe: Callable[[], dict], every: int, reward_evals_per_batch: int):
        self.probe, self.every, self.per_batch = probe, max(1, every), reward_evals_per_batch
        self.points: list[dict] = []
        self.batches = 0
        self.started = 0.0
        self.probe_time = 0.0

    def _record(self) -> None:
        if self.points and self.points[-1]["batches"] == self.batches:
            return
        t0 = time.time()
        training_s = t0 - self.started - self.probe_time     # probing is not training time
        values = self.probe()
        self.probe_time += time.time() - t0
        self.points.append({"batches": self.batches, "reward_evals": self.batches * self.per_batch,
                            "wall_s": round(training_s, 2), **values})

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.time() - (self.points[-1]["wall_s"] if self.points else 0.0)   # resumed: continue
        self._record()

    def state_dict(self) -> dict:
        return {"points": self.points, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.points, self.batches = list(state["points"]), int(state["batches"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches % self.every == 0:
            self._record()

    def on_train_end(self, trainer, pl_module) -> None:
        self._record()


def learning_curve(task, policy, tokenizer, batches: int, reward_evals_per_batch: int,
                   points: int | None = None) -> LearningCurve | None:
    """The task's probe at `points` points (None: `task.curve_points`; a curve study asks for more) of a run of
    `batches` training batches (plus the start and the end), or None when the task has no probe."""
    if not task.curve_points:
        return None
    every = max(1, batches // (points or task.curve_points))
    return LearningCurve(lambda: task.curve_metrics(policy, tokenizer), every, reward_evals_per_batch)
