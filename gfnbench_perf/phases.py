"""The gfnbench step split into its phases (sampling, reward, policy pass, log Z features, backward, optimizer),
by wrapping the functions `GFlowNetModule.training_step` calls: their wall time, and their FLOPs."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from gfnbench_perf.workload import Workload


@contextmanager
def phases_wrapped(wl: Workload, wrap):
    """Replace each phase's function with `wrap(phase, fn)` for one step; the sampling phase's wrapper also sees
    the reward calls it makes (callers take the reward out). Restored however the step ends. The policy pass is
    wrapped where the module's class looks it up (its own module's `policy_log_probs`), wherever that class lives."""
    gfl = sys.modules[type(wl.module).__module__]
    saved = gfl.policy_log_probs
    gfl.policy_log_probs = wrap("policy_forward", saved)
    wl.module.draw = wrap("sampling", wl.module.draw)
    wl.module.log_reward = wrap("reward", wl.module.log_reward)
    wl.module.prompt_features = wrap("log_z_features", wl.module.prompt_features)
    try:
        yield
    finally:
        gfl.policy_log_probs = saved
        del wl.module.draw, wl.module.log_reward, wl.module.prompt_features


def phase_flops(wl: Workload) -> dict:
    """FLOPs of one (untimed) gfnbench step by phase, each under its own counter."""
    phase = {}

    def counted(name, fn):
        def inner(*a, **k):
            with FlopCounterMode(display=False) as c:
                r = fn(*a, **k)
            phase[name] = phase.get(name, 0.0) + c.get_total_flops()
            return r
        return inner

    with phases_wrapped(wl, counted):
        wl.opt.zero_grad(set_to_none=True)
        loss = wl.module.training_step(torch.tensor([0]), 0)
        with FlopCounterMode(display=False) as c:
            loss.backward()
        phase["backward"] = c.get_total_flops()
        wl.opt.step()
    phase["sampling"] -= phase.get("reward", 0.0)
    return phase


class Breakdown:
    """Wall time of the phases of `GFlowNetModule.training_step` (+ backward, optimizer), by wrapping the
    functions it calls; the rest of the step is Python overhead."""

    def __init__(self, wl: Workload):
        self.wl = wl
        self.parts = {"sampling": 0.0, "reward": 0.0, "policy_forward": 0.0, "log_z_features": 0.0,
                      "backward": 0.0, "optimizer": 0.0, "total": 0.0}

    @contextmanager
    def timed(self, name):
        t = time.perf_counter()
        yield
        self.parts[name] += time.perf_counter() - t

    def wrap(self, name, fn):
        def inner(*a, **k):
            with self.timed(name):
                return fn(*a, **k)
        return inner

    def step(self) -> dict:
        wl = self.wl
        with phases_wrapped(wl, self.wrap):
            for k in self.parts:
                self.parts[k] = 0.0
            t0 = time.perf_counter()
            wl.opt.zero_grad(set_to_none=True)
            loss = wl.module.training_step(torch.tensor([0]), 0)
            with self.timed("backward"):
                loss.backward()
            with self.timed("optimizer"):
                wl.opt.step()
            self.parts["total"] = time.perf_counter() - t0
        self.parts["sampling"] -= self.parts["reward"]
        named = sum(v for k, v in self.parts.items() if k != "total")
        return {**self.parts, "python_overhead": self.parts["total"] - named}
