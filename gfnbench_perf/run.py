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
from gfnbench_perf.machine import count_flops, machine, read_bandwidth
from gfnbench_perf.phases import Breakdown, phase_flops
from gfnbench_perf.precisions import LABELS, PIPELINES, check_labels, pipeline_key, precision_summary
from gfnbench_perf.report import targets, write_report
from gfnbench_perf.timing import LOG, PEAKS, bf16_check, eval_throughput, interleaved, record_peaks, reset_peaks
from gfnbench_perf.workload import Workload


def count_work(wl: Workload) -> dict:
    """FLOPs of both pipelines and of the step's phases (untimed steps), and the minimal work, at wl's precision."""
    LOG(f"workload {wl.name} ({wl.precision}): FLOPs (untimed steps)")
    flops = {"gfnbench": count_flops(wl.gfnbench_step), "naive": count_flops(wl.naive_step)}
    phase = phase_flops(wl)
    LOG(f"  flops: {flops}; phases: {phase}")
    P, C = len(wl.prompt_ids), len(wl.reward_ctx_ids)
    mini = minimal_flops(wl.lm, wl.module.cfg.lora_rank, lora_dims(wl.policy), P, C, wl.samples, wl.length,
                         len(wl.suffix), wl.task.min_len)
    shape = (f"prompt {P} tokens, reward context {C} tokens, suffix {len(wl.suffix)} token(s), "
             f"{wl.samples} samples x {wl.length} actions")
    return {"shape": shape, "flops": flops, "per_phase_flops": phase, "minimal_flops": mini}


def precision_result(work: dict, times: dict, label: str) -> dict:
    """One precision's pipelines out of the interleaved rounds: step times, medians, FLOPs, the ratio to naive."""
    res = {"shape": work["shape"], "precision": LABELS[label], "pipelines": {}, "minimal_flops": work["minimal_flops"],
           "per_phase_flops": work["per_phase_flops"]}
    for p in PIPELINES:
        ts = times[pipeline_key(p, label)]
        res["pipelines"][p] = {"times": ts, "median_s": statistics.median(ts), "flops": work["flops"][p]}
    g, n = res["pipelines"]["gfnbench"], res["pipelines"]["naive"]
    res["ratio_vs_naive"] = n["median_s"] / g["median_s"]
    res["round_ratios"] = [b / a for a, b in zip(g["times"], n["times"])]
    return res


def add_breakdown(res: dict, wl: Workload, steps: int, bandwidth: float) -> None:
    """The step's phase times (steps timed apart from the interleaved ones) and the decode's floor."""
    bd = Breakdown(wl)
    parts = [bd.step() for _ in range(max(2, steps // 2))]
    res["breakdown"] = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    res["decode_floor"] = {**decode_matmul_floor(wl.policy, wl.samples, wl.allowed),
                           "decode_steps": wl.length + 1, "read_bandwidth_gbs": bandwidth}


def measure_workload(wls: dict[str, Workload], steps: int, warmup: int, breakdown: bool) -> dict:
    """Work counts at each precision, then every precision's two pipelines interleaved in the same rounds; with
    `breakdown`, each precision's phase times and decode floor. fp32's result at the top, bf16's under "bf16"
    with its step speed-up over fp32 gfnbench beside it. FLOP limits come later (apply_flop_limits)."""
    work = {label: count_work(wl) for label, wl in wls.items()}
    pipes = {pipeline_key(p, label): getattr(wl, f"{p}_step") for label, wl in wls.items() for p in PIPELINES}
    times = interleaved(wls["fp32"], steps, warmup, pipes)
    per = {label: precision_result(work[label], times, label) for label in wls}
    if breakdown:
        bandwidth = read_bandwidth()
        for label, wl in wls.items():
            add_breakdown(per[label], wl, steps, bandwidth)
    res = per.pop("fp32")
    for label, r in per.items():
        res[label] = r
        res[f"{label}_vs_fp32"] = res["pipelines"]["gfnbench"]["median_s"] / r["pipelines"]["gfnbench"]["median_s"]
        res[f"{label}_round_ratios"] = [a / b for a, b in zip(times["gfnbench"], times[pipeline_key("gfnbench",
                                                                                                  label)])]
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
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 (always) and bf16 (bf16-true), interleaved")
    parser.add_argument("--skip", default="", help="comma list of: eval, rss, bf16 (the autocast check), subtb")
    parser.add_argument("--out", default="results/perf.md")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 step: a smoke test of the script")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.labels = check_labels(args.precisions)
    if args.quick:
        args.model, args.steps, args.warmup, args.samples, args.length = "tiny", 1, 0, 4, 6
        args.lora_rank, args.prompt_tokens = 4, 20
        args.skip = args.skip or "rss,subtb"
    return args


def measure_workloads(args: argparse.Namespace, skip: set, result: dict) -> None:
    """Each workload's interleaved gfnbench/naive steps at every precision (a fresh model copy per workload and
    precision: each gets its own LoRA, and bf16's base is cast); on the first, eval throughput (every precision)
    and the bf16 autocast check (fp32 workload)."""
    for i, name in enumerate(filter(None, args.workloads.split(","))):
        wls = {label: Workload(name, load_model(args.model), args.samples, args.length, args.lora_rank,
                               args.prompt_tokens, precision=LABELS[label]) for label in args.labels}
        result["workloads"][name] = measure_workload(wls, args.steps, args.warmup, breakdown=True)
        if i == 0 and "eval" not in skip:
            LOG("evaluation sampling throughput")
            result["eval"] = eval_throughput(wls, max(2, args.steps // 2), args.samples, args.length)
        if i == 0 and "bf16" not in skip:
            LOG("bf16 autocast check")
            result["bf16"] = bf16_check(wls["fp32"], max(2, args.steps // 2))
        del wls


def set_flop_limits(w: dict, peak: float) -> None:
    """Each pipeline's multiple of its own FLOP limit and of the minimal work's, at `peak` GFLOP/s."""
    for d in w["pipelines"].values():
        d["x_own_limit"] = d["median_s"] / (d["flops"] / peak / 1e9)
        d["x_minimal_limit"] = d["median_s"] / (w["minimal_flops"]["total"] / peak / 1e9)


def apply_flop_limits(result: dict) -> None:
    """FLOP limits at each precision's best matmul peak of the run (the machine's capability; the most
    conservative multiple): fp32 pipelines against the fp32 peak, bf16 ones against the bf16 peak."""
    best = {k: max(v) for k, v in PEAKS.items() if v}
    result["matmul_peak_gflops"] = best["fp32"]
    result["matmul_peak_per_round"] = list(PEAKS["fp32"])
    if "bf16" in best:
        result["matmul_peak_gflops_bf16"] = best["bf16"]
        result["matmul_peak_per_round_bf16"] = list(PEAKS["bf16"])
    for w in result["workloads"].values():
        set_flop_limits(w, best["fp32"])
        for label in best:
            if label in w:
                set_flop_limits(w[label], best[label])
    n = result["matmul_peak_n"]
    for label, v in PEAKS.items():
        result["notes"].append(
            f"{label} matmul peak ({n}^3) measured {len(v)} times through the run (start, every interleaved "
            f"round, end): best {max(v):.0f}, median {statistics.median(v):.0f}, worst {min(v):.0f} GFLOP/s.")
    result["notes"].append(
        "The cores are shared with other processes, so absolute times swing; the FLOP limits use each precision's "
        "best peak (the most conservative multiple), and every ratio compares steps interleaved in time.")


def measure_children(args: argparse.Namespace, skip: set, result: dict) -> None:
    """Peak RSS of each pipeline at each precision and SubTB's memory, each in its own process."""
    if "rss" not in skip:
        result["rss"] = []
        for name in filter(None, args.rss_workloads.split(",")):
            for label in args.labels:
                for pipe in PIPELINES:
                    LOG(f"peak RSS child: {name} {pipe} {label}")
                    r = run_child(["--model", args.model, "--samples", str(args.samples), "--length",
                                   str(args.length), "--lora-rank", str(args.lora_rank), "--prompt-tokens",
                                   str(args.prompt_tokens), "--child", f"rss:{name}:{pipe}:2:{LABELS[label]}"])
                    result["rss"].append({"workload": name, "precision": label, **r})
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
    """`make perf` / `gfnbench perf`: every measurement of results/perf.md in one run, fp32 and bf16 together."""
    started = time.perf_counter()
    args = parse_args(argv)
    limit_threads()
    if args.child:
        return child_main(args)
    skip = set(filter(None, args.skip.split(",")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gfnbench.records import git_commit

    result = {"argv": argv if argv is not None else sys.argv[1:], "git_commit": git_commit(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "model": args.model,
              "lora_rank": args.lora_rank, "steps": args.steps, "warmup": args.warmup,
              "precisions": {label: LABELS[label] for label in args.labels}, "workloads": {}, "notes": []}
    result["matmul_peak_n"] = reset_peaks(512 if args.quick else 2048, args.labels)
    result["matmul_peak_gflops_start"] = record_peaks(5)
    LOG(f"matmul peaks (GFLOP/s): {result['matmul_peak_gflops_start']}")
    measure_workloads(args, skip, result)
    result["matmul_peak_gflops_end"] = record_peaks(5)
    apply_flop_limits(result)
    measure_children(args, skip, result)
    result["precision"] = precision_summary(result)
    result["targets"] = targets(result)
    result["wall_s"] = time.perf_counter() - started
    write_report(result, Path(args.out))
    LOG(f"wrote {args.out} ({result['wall_s'] / 60:.1f} min)")
    return result
