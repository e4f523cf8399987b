"""Does a bf16-true base change what the benchmark measures? fp32 against bf16 scoring of the same states.

bf16-true casts the frozen base weights to bf16, and the base model is also the reward model (log R) and the
reference model of logp_ref. A speed-up is only worth having if those scores keep their order. For each task:
sample states from the fp32 base model (fixed seed, training prompts, the task's training sampler), then score
each state's final log R and its logp_ref (log p(state | task prompt)) once with the fp32 model and once with a
bf16-true copy (`precision.cast_frozen_base` on a deep copy; log-softmaxes and sums stay fp32 in the scoring code).
Printed per task and score: n, Spearman rho (ranks, ties averaged), largest and mean |delta|, the fp32 value
range, and states whose score is finite at one precision only. Target: rho >= 0.99.

    python benchmarks/bf16_neutrality.py [--tasks arith,infill] [--states 200] [--per-prompt 8] [--out PATH]
    python benchmarks/bf16_neutrality.py --states 16          # a quick check that it runs
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from gfnbench.models import limit_threads, load_model
from gfnbench.policy import sample_task
from gfnbench.precision import cast_frozen_base, host_cpu_flags
from gfnbench.sampling import encode, sequence_log_likelihoods
from gfnbench.tasks import get_task

TARGET_RHO = 0.99
CHUNK_PROMPTS = 5          # prompts sampled and scored together: bounds the reward pass's batch


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x, tied values sharing the mean of the ranks they span (as Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks; nan when either side is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(fp32: np.ndarray, bf16: np.ndarray) -> dict:
    """How far bf16 scores sit from fp32's on the states finite at both precisions, and how many differ in that."""
    both = np.isfinite(fp32) & np.isfinite(bf16)
    a, b = fp32[both], bf16[both]
    d = np.abs(a - b)
    rho = spearman(a, b) if len(a) > 1 else math.nan
    return {"n": int(both.sum()), "finite_at_one_precision_only": int((np.isfinite(fp32) != np.isfinite(bf16)).sum()),
            "spearman_rho": rho, "max_abs_delta": float(d.max()) if len(d) else math.nan,
            "mean_abs_delta": float(d.mean()) if len(d) else math.nan,
            "fp32_range": [float(a.min()), float(a.max())] if len(a) else [], "met": bool(rho >= TARGET_RHO)}


def scores(task, model, tok, traj, examples, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each state's final log R and its logp_ref under `model` (the base: no adapters here)."""
    with torch.no_grad():
        log_r = task.log_reward(model, tok, traj, examples).float()
        final = log_r.gather(1, traj.lengths[:, None]).squeeze(1)
        prompt_ids = encode(tok, prompts)
        states = [traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist() for b in range(len(traj))]
        ref = sequence_log_likelihoods(model, [prompt_ids[g] for g in traj.group.tolist()], states,
                                       tok.pad_token_id or 0).float()
    return final.numpy().astype(np.float64), ref.numpy().astype(np.float64)


def run_task(name: str, lm, m16, states: int, per_prompt: int, seed: int) -> dict:
    """Sample `states` states from the fp32 base (prompt chunks of CHUNK_PROMPTS) and score them at both precisions."""
    task, tok, m32 = get_task(name), lm.tokenizer, lm.model
    n_prompts = math.ceil(states / per_prompt)
    examples = task.examples("train")[:n_prompts]
    gen = torch.Generator().manual_seed(seed)
    got = {k: [] for k in ("log_r_fp32", "log_r_bf16", "logp_ref_fp32", "logp_ref_bf16")}
    seconds = {"fp32": 0.0, "bf16": 0.0}
    for i in range(0, len(examples), CHUNK_PROMPTS):
        exs = examples[i:i + CHUNK_PROMPTS]
        prompts = [task.prompt(ex) for ex in exs]
        with torch.no_grad():
            traj = sample_task(task, m32, tok, prompts, per_prompt, task.sampling(train=True), context=None,
                               generator=gen)
        for label, model in (("fp32", m32), ("bf16", m16)):
            t = time.perf_counter()
            log_r, ref = scores(task, model, tok, traj, exs, prompts)
            seconds[label] += time.perf_counter() - t
            got[f"log_r_{label}"].append(log_r)
            got[f"logp_ref_{label}"].append(ref)
    cat = {k: np.concatenate(v)[:states] for k, v in got.items()}
    return {"states": len(cat["log_r_fp32"]), "prompts": len(examples), "per_prompt": per_prompt,
            "log_r": compare(cat["log_r_fp32"], cat["log_r_bf16"]),
            "logp_ref": compare(cat["logp_ref_fp32"], cat["logp_ref_bf16"]), "scoring_seconds": seconds}


def summary_line(task: str, score: str, c: dict) -> str:
    lo, hi = c["fp32_range"] or [math.nan, math.nan]
    return (f"{task:8s} {score:8s} n={c['n']:4d} rho={c['spearman_rho']:.4f} max|d|={c['max_abs_delta']:.3f} "
            f"mean|d|={c['mean_abs_delta']:.3f} range=[{lo:.1f}, {hi:.1f}] "
            f"finite at one precision only: {c['finite_at_one_precision_only']}  "
            f"{'met' if c['met'] else 'NOT met'} (rho >= {TARGET_RHO})")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="arith,infill")
    parser.add_argument("--states", type=int, default=200, help="states per task")
    parser.add_argument("--per-prompt", type=int, default=8, help="samples per training prompt")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/bf16_neutrality.json")
    args = parser.parse_args(argv)
    limit_threads()
    started = time.perf_counter()
    lm = load_model(args.model)
    lm.model.eval()
    m16 = cast_frozen_base(copy.deepcopy(lm.model), "bf16-true").eval()
    result = {"model": lm.model_id, "seed": args.seed, "host_cpu_flags": host_cpu_flags(), "target_rho": TARGET_RHO,
              "tasks": {}}
    for name in filter(None, args.tasks.split(",")):
        r = run_task(name, lm, m16, args.states, args.per_prompt, args.seed)
        result["tasks"][name] = r
        for score in ("log_r", "logp_ref"):
            print(summary_line(name, score, r[score]), flush=True)
        s = r["scoring_seconds"]
        print(f"{name:8s} scoring seconds: fp32 {s['fp32']:.1f}, bf16 {s['bf16']:.1f}", flush=True)
    result["wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({result['wall_s'] / 60:.1f} min)")
    return result


if __name__ == "__main__":
    main()
