"""Measurements that need a process of their own (peak RSS, SubTB's memory), and the parent's side that runs them
and reads back the one JSON line each prints."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from gfnbench.losses import subtb_loss
from gfnbench.models import load_model
from gfnbench_perf.machine import reset_hwm, vm_hwm_mb
from gfnbench_perf.workload import Workload


def subtb_loop(log_pf, log_pterm, log_r, lengths):
    """Modified SubTB with an explicit loop over pairs (i, j): the O(L^2) reference."""
    B, L = log_pf.shape
    cum_pf = torch.cat([log_pf.new_zeros(B, 1), log_pf.cumsum(1)], 1)
    total, weight = log_pf.new_zeros(()), 0
    for i in range(L):
        for j in range(i + 1, L + 1):
            valid = j <= lengths
            if not bool(valid.any()):
                continue
            r = log_r[:, i] + cum_pf[:, j] - cum_pf[:, i] + log_pterm[:, j] - log_r[:, j] - log_pterm[:, i]
            total = total + torch.where(valid, r ** 2, torch.zeros_like(r)).sum()
            weight += int(valid.sum())
    return total / weight


def subtb_child(L: int, variant: str, B: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    log_pf = (-torch.rand(B, L, generator=g) * 3).requires_grad_()
    log_pterm = (-torch.rand(B, L + 1, generator=g) * 3).requires_grad_()
    log_r = -torch.rand(B, L + 1, generator=g) * 10
    lengths = torch.full((B,), L)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn = subtb_loss if variant == "vectorized" else subtb_loop
    best = float("inf")
    for _ in range(3 if variant == "vectorized" or L <= 64 else 1):
        t = time.perf_counter()
        loss = fn(log_pf, log_pterm, log_r, lengths)
        loss.backward()
        best = min(best, time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"L": L, "variant": variant, "seconds": best, "rss_growth_mb": (peak - base) / 1024,
            "pair_matrix_mb": B * (L + 1) ** 2 * 4 / 2 ** 20, "loss": float(loss)}


def rss_child(model: str, workload: str, pipeline: str, samples: int, length: int, lora_rank: int,
              prompt_tokens: int, steps: int, precision: str = "32-true") -> dict:
    """Peak RSS of `steps` steps of one pipeline at one precision (the bf16-true base cast after the load)."""
    lm = load_model(model)
    wl = Workload(workload, lm, samples, length, lora_rank, prompt_tokens, precision=precision)
    load_peak = vm_hwm_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reset = reset_hwm()
    after_setup = vm_hwm_mb()
    fn = wl.gfnbench_step if pipeline == "gfnbench" else wl.naive_step
    for _ in range(steps):
        fn()
    step_peak = vm_hwm_mb() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"pipeline": pipeline, "peak_rss_mb": step_peak, "rss_after_setup_mb": after_setup or 0.0,
            "load_peak_rss_mb": load_peak, "peak_reset_after_load": reset}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "gfnbench_perf", *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    for line in out.stdout.splitlines()[::-1]:
        if line.startswith("CHILD "):
            return json.loads(line[6:])
    raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")


def child_main(args: argparse.Namespace) -> dict:
    """One measurement in its own process (peak RSS, SubTB memory), printed as a JSON line for the parent."""
    kind, *rest = args.child.split(":")
    if kind == "subtb":
        res = subtb_child(int(rest[0]), rest[1])
    else:
        res = rss_child(args.model, rest[0], rest[1], args.samples, args.length, args.lora_rank,
                        args.prompt_tokens, int(rest[2]), *rest[3:4])
    print("CHILD " + json.dumps(res), flush=True)
    return res
