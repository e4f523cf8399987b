"""Pipelines timed side by side: interleaved rounds (a fresh matmul peak per precision each round), the
evaluation sampler against HF `generate` in fp32 and in bf16, and the policy pass in fp32 against bf16 autocast."""
from __future__ import annotations

import statistics
import time

import torch

from gfnbench.sampling import SamplingConfig, sample
from gfnbench_perf.machine import matmul_peak
from gfnbench_perf.workload import Workload

LOG = print
PEAK_N = 2048                # the matmul size of the peaks; main sets it (512 in --quick)
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# a quick matmul peak per precision every interleaved round: each precision's best over the run is its FLOP limit
PEAKS: dict[str, list[float]] = {k: [] for k in PEAK_DTYPES}


def reset_peaks(n: int, labels: tuple[str, ...] = ("fp32", "bf16")) -> int:
    """Start a run's peak lists afresh, for the precisions `labels`, measured at n^3 from now on; returns n."""
    global PEAK_N
    PEAK_N = n
    PEAKS.clear()
    PEAKS.update({k: [] for k in labels})
    return n


def record_peaks(repeats: int = 1) -> dict[str, float]:
    """One n^3 matmul peak per precision of the run, appended to PEAKS; returns them."""
    now = {k: matmul_peak(PEAK_N, repeats, PEAK_DTYPES[k]) for k in PEAKS}
    for k, v in now.items():
        PEAKS[k].append(v)
    return now


def interleaved(wl: Workload, steps: int, warmup: int, pipelines: dict) -> dict:
    """Seconds of each pipeline per round after `warmup`, the order alternating so neither always runs first."""
    times = {k: [] for k in pipelines}
    for r in range(warmup + steps):
        record_peaks()
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


def eval_samplers(wl: Workload, rows: int, length: int) -> dict:
    """The evaluation sampler, HF `generate` and the sampler on HF's decoder, on the same batch (rows x length
    tokens from one prompt, continuation mask), each a no-argument callable."""
    tok, policy = wl.lm.tokenizer, wl.policy
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

    return {"gfnbench_sample": ours, "hf_generate": hf, "gfnbench_sample_hf_decoder": ours_hf_decoder}


def eval_throughput(wls: dict[str, Workload], steps: int, rows: int, length: int) -> dict:
    """Tokens/s of the evaluation sampler vs HF `generate` at each precision of `wls` ({"fp32": .., "bf16": ..}),
    all interleaved in one set of rounds; the bf16 rows are keyed `<sampler>_bf16`. The sampler on HF's decoder
    runs in fp32 only (it shows what the lean decoder adds, which bf16 does not change)."""
    pipelines = {}
    for label, wl in wls.items():
        wl.policy.eval()
        for name, fn in eval_samplers(wl, rows, length).items():
            if label == "fp32":
                pipelines[name] = fn
            elif name != "gfnbench_sample_hf_decoder":
                pipelines[f"{name}_{label}"] = fn
    times = interleaved(next(iter(wls.values())), steps, 1, pipelines)
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: rows * length / v for k, v in med.items()}
    out = {"rows": rows, "length": length, "seconds": med, "tokens_per_s": tps}
    if "gfnbench_sample" in tps:
        out["ratio_vs_generate"] = tps["gfnbench_sample"] / tps["hf_generate"]
    if "gfnbench_sample_bf16" in tps:
        out["ratio_vs_generate_bf16"] = tps["gfnbench_sample_bf16"] / tps["hf_generate_bf16"]
    if "gfnbench_sample" in tps and "gfnbench_sample_bf16" in tps:
        out["bf16_vs_fp32"] = tps["gfnbench_sample_bf16"] / tps["gfnbench_sample"]
        out["generate_bf16_vs_fp32"] = tps["hf_generate_bf16"] / tps["hf_generate"]
    return out


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
