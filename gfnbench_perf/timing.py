"""Pipelines timed side by side: interleaved rounds (a fresh matmul peak each round), the evaluation sampler
against HF `generate`, and the policy pass in fp32 against bf16 autocast."""
from __future__ import annotations

import statistics
import time

import torch

from gfnbench.sampling import SamplingConfig, sample
from gfnbench_perf.machine import matmul_peak
from gfnbench_perf.workload import Workload

LOG = print
PEAK_N = 2048                # the matmul size of the peaks; main sets it (512 in --quick)
PEAKS: list[float] = []      # a quick matmul peak every interleaved round: the run's best is the FLOP limit


def reset_peaks(n: int) -> int:
    """Start a run's peak list afresh, measured at n^3 from now on; returns n."""
    global PEAK_N
    PEAK_N = n
    PEAKS.clear()
    return n


def interleaved(wl: Workload, steps: int, warmup: int, pipelines: dict) -> dict:
    """Seconds of each pipeline per round after `warmup`, the order alternating so neither always runs first."""
    times = {k: [] for k in pipelines}
    for r in range(warmup + steps):
        PEAKS.append(matmul_peak(PEAK_N, 1))
        order = list(pipelines) if r % 2 == 0 else list(pipelines)[::-1]
        for name in order:
            torch.manual_seed(1000 + r)
            t = time.perf_counter()
            pipelines[name]()
            dt = time.perf_counter() - t
            if r >= warmup:
                times[name].append(dt)
        LOG(f"  [{wl.name}] round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" if v else k for k, v in times.items()))
    return times


def eval_throughput(wl: Workload, steps: int, rows: int, length: int) -> dict:
    """Tokens/s of the evaluation sampler vs HF `generate`, same batch (rows x length, one prompt), interleaved."""
    tok, policy = wl.lm.tokenizer, wl.policy
    policy.eval()
    cfg = SamplingConfig(temperature=1.0, min_len=length, max_len=length)
    ids = torch.tensor([wl.prompt_ids])
    bad = (~wl.allowed).nonzero().flatten().tolist()

    def ours():
        sample(policy, tok, [wl.prompt], rows, cfg, stop_id=wl.stop_id, allowed=wl.allowed, generator=wl.gen)

    def hf():
        with torch.no_grad():
            policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                            num_return_sequences=rows, max_new_tokens=length, min_new_tokens=length,
                            eos_token_id=wl.stop_id, pad_token_id=tok.pad_token_id, suppress_tokens=bad, top_k=0,
                            top_p=1.0, temperature=1.0)

    def ours_hf_decoder():
        sample(policy, tok, [wl.prompt], rows, cfg, stop_id=wl.stop_id, allowed=wl.allowed, generator=wl.gen,
               fast=False)

    times = interleaved(wl, steps, 1, {"gfnbench_sample": ours, "hf_generate": hf,
                                       "gfnbench_sample_hf_decoder": ours_hf_decoder})
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: rows * length / v for k, v in med.items()}
    return {"rows": rows, "length": length, "seconds": med, "tokens_per_s": tps,
            "ratio_vs_generate": tps["gfnbench_sample"] / tps["hf_generate"]}


def bf16_check(wl: Workload, repeats: int) -> dict:
    """Policy pass + backward in fp32 vs under bf16 autocast (rewards stay fp32), same trajectories."""
    from gfnbench.sampling import policy_log_probs

    policy = wl.policy
    policy.eval()
    traj = sample(policy, wl.lm.tokenizer, [wl.prompt], wl.samples, wl.task.sampling(train=True),
                  stop_id=wl.stop_id, allowed=wl.allowed, generator=wl.gen)

    def run(bf16: bool):
        policy.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            log_pf, log_pterm = policy_log_probs(policy, traj, wl.allowed, wl.stop_id)
        loss = log_pf.float().sum() + log_pterm.float().sum()
        wl.opt.zero_grad(set_to_none=True)
        loss.backward()
        return log_pf.detach().float()

    ref = run(False)
    low = run(True)
    times = interleaved(wl, repeats, 1, {"fp32": lambda: run(False), "bf16_autocast": lambda: run(True)})
    med = {k: statistics.median(v) for k, v in times.items()}
    m = traj.action_mask()
    return {"seconds": med, "speedup": med["fp32"] / med["bf16_autocast"],
            "max_abs_log_pf_diff": float((ref[m] - low[m]).abs().max())}
