"""results/perf.md (and the .json beside it) from one run's result dict, with the issue-#11 and bf16 targets."""
from __future__ import annotations

import json
from pathlib import Path

from gfnbench_perf.floors import step_floor
from gfnbench_perf.precisions import bf16_targets


def fmt_flops(x: float) -> str:
    return f"{x / 1e12:.3f} TFLOP" if x >= 1e11 else f"{x / 1e9:.2f} GFLOP"


def workload_section(name: str, w: dict, peak: float) -> list[str]:
    lines = [f"### {name}: {w['shape']}", "",
             "| pipeline | s/step (median) | min | steps | matmul work / step | x own FLOP limit "
             "| x minimal-work limit |",
             "|---|---|---|---|---|---|---|"]
    for p, d in w["pipelines"].items():
        steps = ", ".join(f"{t:.2f}" for t in d["times"])
        lines.append(f"| {p} | {d['median_s']:.2f} | {min(d['times']):.2f} | {steps} | "
                     f"{fmt_flops(d['flops'])} | {d['x_own_limit']:.2f} | {d['x_minimal_limit']:.2f} |")
    lines += ["", f"**gfnbench vs naive: {w['ratio_vs_naive']:.2f}x faster** (medians, same run; per-round "
              f"ratios {', '.join(f'{x:.2f}' for x in w['round_ratios'])}); minimal work "
              f"{fmt_flops(w['minimal_flops']['total'])} (limit {w['minimal_flops']['total'] / peak / 1e9:.2f} s).",
              ""]
    if "per_phase_flops" in w:
        lines += ["gfnbench step by phase (FlopCounterMode, untimed step) against the minimal work:", "",
                  "| phase | gfnbench | minimal |", "|---|---|---|"]
        for k, v in w["per_phase_flops"].items():
            lines.append(f"| {k} | {fmt_flops(v)} | {fmt_flops(w['minimal_flops'].get(k, 0.0))} |")
        lines.append("")
    if "breakdown" in w:
        b = w["breakdown"]
        lines += ["gfnbench step breakdown (median over timed steps, seconds):", "",
                  "| " + " | ".join(b) + " |", "|" + "---|" * len(b), "| " + " | ".join(f"{v:.2f}" for v in b.values())
                  + " |", ""]
    if "decode_floor" in w:
        lines += decode_lines(w, peak)
    return lines


def decode_lines(w: dict, peak: float) -> list[str]:
    """The sampler's decode against the machine's memory bandwidth, and the step's floor on this machine."""
    d = w["decode_floor"]
    floor = d["seconds_per_step"] * d["decode_steps"]
    lines = [f"Decode matmuls at the sampler's shape ({d['rows']} rows through every weight matrix, LoRA merged): "
             f"{d['gflops_per_s']:.0f} GFLOP/s ({d['gflops_per_s'] / peak:.0%} of the 2048^3 peak), "
             f"{d['seconds_per_step'] * 1e3:.0f} ms per decode step; the {d['decode_steps']} decode steps' matmuls "
             f"alone take {floor:.2f} s of the sampling phase"
             + (f"'s {w['breakdown']['sampling']:.2f} s." if "breakdown" in w else ".")]
    if "read_bandwidth_gbs" in d:
        mb = d["weight_bytes_per_step"] / 1e6
        f = step_floor(w, peak)
        lines += [f"Each decode step reads {mb:.0f} MB of weights, more than stays in cache from one step to the "
                  f"next: the matmuls stream them at {mb / 1e3 / d['seconds_per_step']:.1f} GB/s against a same-run "
                  f"read bandwidth of {d['read_bandwidth_gbs']:.1f} GB/s (a sum over 1 GiB), so the decode is bound "
                  f"by memory, not arithmetic; at that bandwidth the weight reads alone take "
                  f"{f['sampling_reads_s']:.2f} s.",
                  f"**Floor of this step on this machine**: those reads plus every other phase's matmul FLOPs at the "
                  f"2048^3 peak ({f['other_matmuls_s']:.2f} s), with no elementwise work and no dispatch: "
                  f"{f['total_s']:.2f} s, which is {f['naive_over_floor']:.2f}x faster than the naive median and "
                  f"{f['floor_x_minimal_limit']:.2f}x the minimal-work limit."]
    return lines + [""]


def bf16_lines(name: str, w: dict, peak_bf16: float) -> list[str]:
    """The workload's bf16-true pipelines (same interleaved rounds as fp32) and bf16 gfnbench against fp32."""
    lines = workload_section(f"{name} in bf16-true (bf16 base; LoRA, log-softmaxes and losses fp32)", w["bf16"],
                             peak_bf16)
    r = w["bf16_round_ratios"]
    return lines + [f"**bf16 gfnbench vs fp32 gfnbench: {w['bf16_vs_fp32']:.2f}x faster** (medians, same rounds; "
                    f"per-round ratios {', '.join(f'{x:.2f}' for x in r)}); the naive pipeline: "
                    f"{w['pipelines']['naive']['median_s'] / w['bf16']['pipelines']['naive']['median_s']:.2f}x.", ""]


def report_header(result: dict) -> list[str]:
    """Where, when, at which commit and on what the report was measured, and how long the run took."""
    m, peak = result["machine"], result["matmul_peak_gflops"]
    bf16 = result.get("matmul_peak_gflops_bf16")
    lines = ["# GFlowNet step performance (one run, pipelines and precisions interleaved)", "",
             f"Written by `python -m gfnbench_perf {' '.join(result['argv'])}` on {result['date']}, at git commit "
             f"{result.get('git_commit', 'unknown')}; the whole run took {result.get('wall_s', 0) / 60:.1f} min.", "",
             f"- machine: {m['cpu']}, {m['cores']} cores; flags: {', '.join(m['cpu_flags'])}",
             f"- torch {m['torch']}, transformers {m['transformers']}, python {m['python']}; torch threads "
             f"{m['torch_threads']} (interop {m['interop_threads']}); env {m.get('env') or '-'}",
             f"- model: {result['model']}; LoRA r{result['lora_rank']} on the architecture's default targets "
             f"(q/k/v/o for Llama), fp32; precisions: "
             f"{', '.join(result.get('precisions', {'fp32': '32-true'}).values())}",
             f"- same-run fp32 matmul peak ({result.get('matmul_peak_n', 2048)}^3, best over the run): "
             f"**{peak:.0f} GFLOP/s**"
             + (f"; bf16: **{bf16:.0f} GFLOP/s** ({bf16 / peak:.1f}x)" if bf16 else "")
             + "; 'x own FLOP limit' = s/step / (own matmul FLOPs / peak), 'x minimal-work limit' = s/step / "
             "(minimal FLOPs / peak), each at its own precision's peak"]
    if "precision" in result:
        lines.append(f"- {result['precision']['host_line']}")
    return lines + [f"- {result['steps']} timed steps per pipeline after {result['warmup']} warm-up round(s); "
                    f"medians", ""]


def eval_lines(e: dict) -> list[str]:
    """Evaluation sampling's tokens/s against HF `generate`, at each precision measured."""
    lines = ["## Evaluation sampling throughput", "",
             f"{e['rows']} rows x {e['length']} tokens from one prompt (continuation mask), median seconds "
             f"(`_bf16`: the bf16-true base):", "", "| sampler | s | tokens/s |", "|---|---|---|"]
    for k in e["seconds"]:
        lines.append(f"| {k} | {e['seconds'][k]:.2f} | {e['tokens_per_s'][k]:.0f} |")
    lines += ["", f"**gfnbench sampler vs HF generate: {e['ratio_vs_generate']:.2f}x tokens/s** (fp32)."]
    if "bf16_vs_fp32" in e:
        lines += [f"**In bf16: {e['ratio_vs_generate_bf16']:.2f}x HF generate in bf16; the gfnbench sampler in bf16 "
                  f"vs fp32: {e['bf16_vs_fp32']:.2f}x tokens/s** (HF generate: {e['generate_bf16_vs_fp32']:.2f}x)."]
    return lines + [""]


def rss_lines(rss: list[dict]) -> list[str]:
    lines = ["## Peak RSS (each pipeline in its own process: load, build, 2 steps)", "",
             "Peak of the steps: the high-water mark is reset after the model load (whose own transient peak "
             "is shown apart).", "",
             "| workload | precision | pipeline | peak RSS of the steps | RSS after setup "
             "| peak during the model load |",
             "|---|---|---|---|---|---|"]
    for r in rss:
        lines.append(f"| {r['workload']} | {r.get('precision', 'fp32')} | {r['pipeline']} | "
                     f"{r['peak_rss_mb'] / 1024:.2f} GB | {r['rss_after_setup_mb'] / 1024:.2f} GB | "
                     f"{r.get('load_peak_rss_mb', 0) / 1024:.2f} GB |")
    return lines + [""]


def subtb_lines(result: dict) -> list[str]:
    lines = ["## SubTB: vectorized [B, L+1, L+1] vs an O(L^2) loop over pairs (B = 16, forward + backward)",
             "", "| L | vectorized s | loop s | vectorized RSS growth | loop RSS growth | one [B, L+1, L+1] fp32 |",
             "|---|---|---|---|---|---|"]
    for L, d in result["subtb"].items():
        lines.append(f"| {L} | {d['vectorized']['seconds']:.4f} | {d['loop']['seconds']:.3f} | "
                     f"{d['vectorized']['rss_growth_mb']:.0f} MB | {d['loop']['rss_growth_mb']:.0f} MB | "
                     f"{d['vectorized']['pair_matrix_mb']:.1f} MB |")
    return lines + ["", result.get("subtb_note", ""), ""]


def write_report(result: dict, out: Path) -> None:
    peak = result["matmul_peak_gflops"]
    lines = report_header(result)
    for name, w in result["workloads"].items():
        lines += workload_section(name, w, peak)
        if "bf16" in w:
            lines += bf16_lines(name, w, result["matmul_peak_gflops_bf16"])
    if "eval" in result:
        lines += eval_lines(result["eval"])
    if "rss" in result:
        lines += rss_lines(result["rss"])
    if "bf16" in result:
        b = result["bf16"]
        lines += ["## bf16 autocast (bf16-mixed) for the policy pass (forward + backward, same trajectories)", "",
                  f"fp32 {b['seconds']['fp32']:.2f} s, bf16 autocast {b['seconds']['bf16_autocast']:.2f} s: "
                  f"speed-up {b['speedup']:.2f}x; max |d log_pf| {b['max_abs_log_pf_diff']:.3f}.", ""]
    if "subtb" in result:
        lines += subtb_lines(result)
    if "targets" in result:
        lines += ["## Targets (issue #11; bf16 rows: the bf16 issue)", "", "| target | value | met |",
                  "|---|---|---|"]
        for t in result["targets"]:
            lines.append(f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |")
        lines.append("")
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))


def targets(result: dict) -> list[dict]:
    out = []
    w = result["workloads"].get("continuation")
    if w:
        g = w["pipelines"]["gfnbench"]
        out.append({"target": "gfnbench >= 3.5x faster than naive (continuation)",
                    "value": f"{w['ratio_vs_naive']:.2f}x", "met": w["ratio_vs_naive"] >= 3.5})
        out.append({"target": "<= 1.3x the FLOP limit of the minimal work", "value": f"{g['x_minimal_limit']:.2f}x",
                    "met": g["x_minimal_limit"] <= 1.3})
        out.append({"target": "<= 0.55 TFLOP per step", "value": fmt_flops(g["flops"]), "met": g["flops"] <= 0.55e12})
    for r in result.get("rss", []):
        if r["workload"] == "continuation" and r["pipeline"] == "gfnbench" and r.get("precision", "fp32") == "fp32":
            out.append({"target": "peak RSS of the step process <= 2 GB", "value": f"{r['peak_rss_mb'] / 1024:.2f} GB",
                        "met": r["peak_rss_mb"] <= 2048})
    if "eval" in result:
        e = result["eval"]["ratio_vs_generate"]
        out.append({"target": "eval sampling >= 3x generate tokens/s", "value": f"{e:.2f}x", "met": e >= 3})
    a = result["workloads"].get("arith")
    if a:
        out.append({"target": "arith workload ratio (reported)", "value": f"{a['ratio_vs_naive']:.2f}x", "met": True})
    return out + bf16_targets(result.get("precision", {}))
