"""bf16 against fp32 in one perf run: the precisions measured, how their pipelines are keyed in the interleaved
rounds, the host's bf16 hardware in one line, the `precision` summary of results/perf.json and the bf16 targets.

fp32 is the reference and always runs; bf16 is gfnbench's `bf16-true` (the frozen base in bf16, LoRA, log Z,
log-softmaxes and losses fp32), and the naive pipeline in bf16 is the same HF model on that bf16 base with its
log-softmaxes in fp32."""
from __future__ import annotations

from gfnbench.precision import cpu_vendor, fast_cpu_bf16_path, has_fast_bf16, host_cpu_flags, resolve_precision

LABELS = {"fp32": "32-true", "bf16": "bf16-true"}       # a perf run's label -> gfnbench's precision name
PIPELINES = ("gfnbench", "naive")


def check_labels(text: str) -> tuple[str, ...]:
    """The precisions a run measures, from `--precisions` ("fp32,bf16"): fp32 always (every ratio's reference)."""
    labels = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    unknown = [x for x in labels if x not in LABELS]
    if unknown or "fp32" not in labels:
        raise ValueError(f"--precisions takes a comma list of {', '.join(LABELS)} that includes fp32, got {text!r}")
    return labels


def pipeline_key(pipeline: str, label: str) -> str:
    """A pipeline's name in the interleaved rounds: `gfnbench`, `naive` (fp32), `gfnbench_bf16`, `naive_bf16`."""
    return pipeline if label == "fp32" else f"{pipeline}_{label}"


def host_line(flags: list[str] | None = None, vendor: str | None = None) -> str:
    """One line on whether this host has a measured fast bf16 path, which decides what the bf16 numbers can show."""
    flags = host_cpu_flags() if flags is None else flags
    vendor = cpu_vendor() if vendor is None else vendor
    shown = ", ".join(flags) or "none of them"
    path = fast_cpu_bf16_path(flags, vendor)
    auto = "bf16-true" if path else "32-true"
    if path == "AMX":
        return (f"this host has AMX (bf16 flags: {shown}): bf16 matmuls run on the AMX tiles, and "
                f"`--precision auto` resolves to {auto}")
    if path:
        return (f"this host has no AMX but is an {vendor} CPU with avx512_bf16 (bf16 flags: {shown}), where bf16 "
                f"was measured faster than fp32 (results/perf_amd.md), so `--precision auto` resolves to {auto}")
    return (f"this host has no AMX (bf16 flags: {shown}; vendor {vendor or 'unknown'}): no fast bf16 path has been "
            f"measured on such a CPU, so the bf16 rows are not expected to beat fp32, and `--precision auto` "
            f"resolves to {auto}")


def speedups(w: dict) -> dict:
    """One workload's bf16 ratios (medians of the same interleaved rounds): the bf16 gfnbench step against fp32
    gfnbench and against the naive pipeline in bf16, and its multiple of the bf16 FLOP limit of the minimal work."""
    b = w["bf16"]
    return {"bf16_vs_fp32": w["bf16_vs_fp32"], "bf16_vs_naive_bf16": b["ratio_vs_naive"],
            "bf16_x_minimal_limit": b["pipelines"]["gfnbench"]["x_minimal_limit"],
            "fp32_vs_naive": w["ratio_vs_naive"], "fp32_x_minimal_limit": w["pipelines"]["gfnbench"]["x_minimal_limit"],
            "naive_bf16_vs_fp32": w["pipelines"]["naive"]["median_s"] / b["pipelines"]["naive"]["median_s"]}


def headline(result: dict) -> tuple[str, dict] | None:
    """The workload the targets are read on: continuation when measured, else the first; None without bf16."""
    ws = {k: w for k, w in result["workloads"].items() if "bf16" in w}
    if not ws:
        return None
    name = "continuation" if "continuation" in ws else next(iter(ws))
    return name, ws[name]


def precision_summary(result: dict) -> dict:
    """results/perf.json's `precision` object: the host's flags, both precisions' matmul peaks, the headline
    workload's bf16 ratios (plus every workload's) and evaluation sampling's bf16 against fp32."""
    flags = host_cpu_flags()
    out = {"host_cpu_flags": flags, "amx": "amx_bf16" in flags, "fast_bf16": has_fast_bf16("cpu"),
           "cpu_vendor": cpu_vendor(), "auto_resolves_to": resolve_precision("auto", "cpu"),
           "host_line": host_line(flags),
           "matmul_peak_gflops": {"fp32": result["matmul_peak_gflops"],
                                  "bf16": result.get("matmul_peak_gflops_bf16")}}
    head = headline(result)
    if head:
        out["headline_workload"] = head[0]
        out.update(speedups(head[1]))
        out["workloads"] = {k: speedups(w) for k, w in result["workloads"].items() if "bf16" in w}
    e = result.get("eval", {})
    if "bf16_vs_fp32" in e:
        out["eval_bf16_vs_fp32"] = e["bf16_vs_fp32"]
        out["eval_bf16_vs_generate_bf16"] = e["ratio_vs_generate_bf16"]
    return out


def bf16_targets(summary: dict) -> list[dict]:
    """The bf16 issue's targets, met or not, from the `precision` summary (the targets are fixed, never tuned)."""
    out = []
    if "bf16_vs_fp32" in summary:
        w = summary["headline_workload"]
        out += [{"target": f"bf16 gfnbench step >= 3x faster than fp32 gfnbench ({w})",
                 "value": f"{summary['bf16_vs_fp32']:.2f}x", "met": summary["bf16_vs_fp32"] >= 3},
                {"target": f"bf16 gfnbench >= 3.5x faster than the naive pipeline in bf16 ({w})",
                 "value": f"{summary['bf16_vs_naive_bf16']:.2f}x", "met": summary["bf16_vs_naive_bf16"] >= 3.5},
                {"target": f"bf16 gfnbench <= 2x the bf16 FLOP limit of the minimal work ({w})",
                 "value": f"{summary['bf16_x_minimal_limit']:.2f}x", "met": summary["bf16_x_minimal_limit"] <= 2}]
    if "eval_bf16_vs_fp32" in summary:
        out.append({"target": "eval sampling >= 2x faster in bf16 than in fp32",
                    "value": f"{summary['eval_bf16_vs_fp32']:.2f}x", "met": summary["eval_bf16_vs_fp32"] >= 2})
    return out
