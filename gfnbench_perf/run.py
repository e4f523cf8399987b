"""The perf run: each workload's FLOPs and interleaved timings, then the child-process measurements, then the
report (`python -m gfnbench_perf`, `make perf`, `gfnbench perf`)."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from gfnbench.models import limit_threads, load_model
from gfnbench_perf.children import child_main, run_child
from gfnbench_perf.floors import decode_matmul_floor, lora_dims, minimal_flops
from gfnbench_perf.machine import count_flops, machine, matmul_peak, read_bandwidth
from gfnbench_perf.phases import Breakdown, phase_flops
from gfnbench_perf.report import targets, write_report
from gfnbench_perf.timing import LOG, PEAKS, bf16_check, eval_throughput, interleaved, reset_peaks
from gfnbench_perf.workload import Workload


def measure_workload(wl: Workload, steps: int, warmup: int, peak: float, breakdown: bool) -> dict:
    """FLOPs of both pipelines and the step's phases (untimed steps), then their interleaved timings against the
    minimal work; with `breakdown`, the step's phase times and the decode's floor."""
    LOG(f"workload {wl.name}: FLOPs (untimed steps)")
    flops = {"gfnbench": count_flops(wl.gfnbench_step), "naive": count_flops(wl.naive_step)}
    phase = phase_flops(wl)
    LOG(f"  flops: {flops}; phases: {phase}")
    times = interleaved(wl, steps, warmup, {"gfnbench": wl.gfnbench_step, "naive": wl.naive_step})
    P = len(wl.prompt_ids)
    C = len(wl.reward_ctx_ids)
    mini = minimal_flops(wl.lm, wl.module.cfg.lora_rank, lora_dims(wl.policy), P, C, wl.samples, wl.length,
                         len(wl.suffix), wl.task.min_len)
    res = {"shape": f"prompt {P} tokens, reward context {C} tokens, suffix {len(wl.suffix)} token(s), "
                    f"{wl.samples} samples x {wl.length} actions", "pipelines": {}, "minimal_flops": mini,
           "per_phase_flops": phase}
    for name, ts in times.items():
        med = statistics.median(ts)
        res["pipelines"][name] = {"times": ts, "median_s": med, "flops": flops[name],
                                  "x_own_limit": med / (flops[name] / peak / 1e9),
                                  "x_minimal_limit": med / (mini["total"] / peak / 1e9)}
    res["ratio_vs_naive"] = res["pipelines"]["naive"]["median_s"] / res["pipelines"]["gfnbench"]["median_s"]
    res["round_ratios"] = [n / g for g, n in zip(times["gfnbench"], times["naive"])]
    if breakdown:
        bd = Breakdown(wl)
        parts = [bd.step() for _ in range(max(2, steps // 2))]
        res["breakdown"] = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
        res["decode_floor"] = {**decode_matmul_floor(wl.policy, wl.samples, wl.allowed),
                               "decode_steps": wl.length + 1, "read_bandwidth_gbs": read_bandwidth()}
    return res


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import gfnbench_perf

    parser = argparse.ArgumentParser(description=gfnbench_perf.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--prompt-tokens", type=int, default=60)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--workloads", default="continuation,arith")
    parser.add_argument("--rss-workloads", default="continuation", help="workloads whose peak RSS is measured")
    parser.add_argument("--skip", default="", help="comma list of: eval, rss, bf16, subtb, per_prefix")
    parser.add_argument("--out", default="results/perf.md")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 step: a smoke test of the script")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.steps, args.warmup, args.samples, args.length = "tiny", 1, 0, 4, 6
        args.lora_rank, args.prompt_tokens = 4, 20
        args.skip = args.skip or "rss,subtb"
    return args


def measure_workloads(args: argparse.Namespace, skip: set, peak: float, result: dict) -> None:
    """Each workload's interleaved gfnbench/naive steps; on the first, eval throughput and the bf16 check."""
    for i, name in enumerate(filter(None, args.workloads.split(","))):
        lm = load_model(args.model)      # a fresh copy per workload: each gets its own LoRA
        wl = Workload(name, lm, args.samples, args.length, args.lora_rank, args.prompt_tokens)
        result["workloads"][name] = measure_workload(wl, args.steps, args.warmup, peak, breakdown=True)
        if i == 0 and "eval" not in skip:
            LOG("evaluation sampling throughput")
            result["eval"] = eval_throughput(wl, max(2, args.steps // 2), args.samples, args.length)
        if i == 0 and "bf16" not in skip:
            LOG("bf16 autocast check")
            b = bf16_check(wl, max(2, args.steps // 2))
            b["verdict"] = ("Not adopted: no real speed-up on this CPU (avx512_bf16 without AMX)."
                            if b["speedup"] < 1.1 else "A real speed-up: worth a `precision` setting.")
            result["bf16"] = b
        del wl, lm


def apply_flop_limits(result: dict, end_peak: float) -> None:
    """FLOP limits at the run's best matmul peak (the machine's capability; the most conservative multiple)."""
    PEAKS.extend([result["matmul_peak_gflops"], end_peak])
    best = max(PEAKS)
    result["matmul_peak_gflops_end"] = end_peak
    result["matmul_peak_per_round"] = list(PEAKS)
    result["matmul_peak_gflops"] = best
    for w in result["workloads"].values():
        for d in w["pipelines"].values():
            d["x_own_limit"] = d["median_s"] / (d["flops"] / best / 1e9)
            d["x_minimal_limit"] = d["median_s"] / (w["minimal_flops"]["total"] / best / 1e9)
    result["notes"].append(
        f"matmul peak (2048^3 fp32) measured {len(PEAKS)} times through the run (start, every interleaved round, "
        f"end): best {best:.0f}, median {statistics.median(PEAKS):.0f}, worst {min(PEAKS):.0f} GFLOP/s. The "
        f"cores are shared with other processes, so absolute times swing; the FLOP limits use the best peak "
        f"(the most conservative multiple), and every gfnbench/naive ratio compares steps interleaved in time.")


def measure_children(args: argparse.Namespace, skip: set, result: dict) -> None:
    """Peak RSS of each pipeline and SubTB's memory, each in its own process."""
    if "rss" not in skip:
        result["rss"] = []
        for name in filter(None, args.rss_workloads.split(",")):
            for pipe in ("gfnbench", "naive"):
                LOG(f"peak RSS child: {name} {pipe}")
                r = run_child(["--model", args.model, "--samples", str(args.samples), "--length", str(args.length),
                               "--lora-rank", str(args.lora_rank), "--prompt-tokens", str(args.prompt_tokens),
                               "--child", f"rss:{name}:{pipe}:2"])
                result["rss"].append({"workload": name, **r})
    if "subtb" not in skip:
        result["subtb"] = {}
        for L in (16, 64, 256):
            LOG(f"subtb L={L}")
            result["subtb"][L] = {v: run_child(["--child", f"subtb:{L}:{v}"]) for v in ("vectorized", "loop")}
        result["subtb_note"] = ("The vectorized loss holds a handful of [B, L+1, L+1] fp32 tensors (residual, "
                                "weight, pair mask, penalty, their gradients): fine while that is small next to "
                                "the model's activations; at B = 16 it reaches ~100 MB per tensor near L = 1,300 "
                                "and 1 GB near L = 4,000, where a loop over diagonals (or a blocked sum) is the "
                                "better form.")


def main(argv: list[str] | None = None) -> dict:
    """`make perf` / `gfnbench perf`: every measurement of results/perf.md in one run."""
    args = parse_args(argv)
    limit_threads()
    if args.child:
        return child_main(args)
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gfnbench.records import git_commit

    result = {"argv": argv if argv is not None else sys.argv[1:], "git_commit": git_commit(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "model": args.model,
              "lora_rank": args.lora_rank, "steps": args.steps, "warmup": args.warmup, "workloads": {}, "notes": []}
    peak_n = reset_peaks(512 if args.quick else 2048)
    result["matmul_peak_gflops"] = peak = matmul_peak(peak_n)
    LOG(f"matmul peak {peak:.0f} GFLOP/s")
    measure_workloads(args, skip, peak, result)
    apply_flop_limits(result, matmul_peak(peak_n))
    measure_children(args, skip, result)
    result["targets"] = targets(result)
    write_report(result, Path(args.out))
    LOG(f"wrote {args.out}")
    return result
