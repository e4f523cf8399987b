"""Lower bounds of a GFlowNet step: the least matmul work it needs, the decode's weight-read time, and the
step's floor on this machine, so a measured time can be read as a multiple of what is possible."""
from __future__ import annotations

import time

import torch

from gfnbench.sampling import few_allowed


def decode_matmul_floor(policy, rows: int, allowed: torch.Tensor, repeats: int = 3) -> dict:
    """Seconds of the matmuls one decode step cannot avoid: `rows` x hidden through every weight matrix of the
    model (LoRA merged, as the sampler does; the output layer on the allowed tokens' rows when the sampler does
    that), at the sampler's own shape, best of `repeats`. At 16 rows these matmuls run far below the 2048^3 peak
    (weight reads, not arithmetic, bound them), so this, not the FLOP count, is the sampling phase's limit."""
    head = policy.get_output_embeddings()
    weights = [m.weight for n, m in policy.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora_" not in n and m is not head]
    n_allowed = int(allowed.sum())
    weights.append(head.weight[allowed] if few_allowed(n_allowed, allowed.numel()) else head.weight)
    xs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}     # bf16 on a bf16 base
    flops = sum(2 * rows * w.shape[0] * w.shape[1] for w in weights)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats + 1):
            t = time.perf_counter()
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)
            best = min(best, time.perf_counter() - t)
    return {"rows": rows, "seconds_per_step": best, "gflops_per_s": flops / best / 1e9,
            "weight_bytes_per_step": sum(w.numel() * w.element_size() for w in weights)}


def step_floor(w: dict, peak: float) -> dict:
    """A floor for the gfnbench step on this machine: the sampler's weight reads at the read bandwidth plus every
    other phase's matmul FLOPs at the 2048^3 peak, with no elementwise work and no dispatch at all. For bf16 pass
    the bf16 workload and peak: its weight bytes (measured from the weights' element size) are half fp32's."""
    d = w["decode_floor"]
    reads = d["weight_bytes_per_step"] * d["decode_steps"] / (d["read_bandwidth_gbs"] * 1e9)
    other = sum(v for k, v in w["per_phase_flops"].items() if k != "sampling") / (peak * 1e9)
    total = reads + other
    return {"sampling_reads_s": reads, "other_matmuls_s": other, "total_s": total,
            "naive_over_floor": w["pipelines"]["naive"]["median_s"] / total,
            "floor_x_minimal_limit": total / (w["minimal_flops"]["total"] / peak / 1e9)}


def minimal_flops(lm, lora_rank: int, n_lora_targets_dims: int, P: int, C: int, B: int, L: int,
                  suffix_len: int, min_len: int = 0, adapters_in_reward: bool = False) -> dict:
    """Matmul FLOPs of the least work this step needs (every pass runs a shared prompt once; the state pass gives
    each prefix's state log-prob and the suffix's first token; the rest of a longer suffix needs one copy of its
    first suffix_len - 1 tokens per scored prefix, j >= min_len), full-vocabulary output layer.
    Forward: 2 x weights per token (+ LoRA), attention 4 x keys x hidden per token and layer; backward: the frozen
    layers need their input gradient only (1x forward), LoRA and attention 2x."""
    cfg = lm.model.config
    H = cfg.hidden_size
    V = cfg.vocab_size
    n_layers = cfg.num_hidden_layers
    body_w = sum(p.numel() for n, p in lm.model.named_parameters()
                 if p.dim() == 2 and "embed" not in n and "lm_head" not in n and "wte" not in n and "wpe" not in n)
    lora_w = n_layers * lora_rank * n_lora_targets_dims      # A (in x r) + B (r x out) per target
    head = 2 * H * V

    def body(tokens, keys, lora):
        return tokens * (2 * body_w + (2 * lora_w if lora else 0) + n_layers * 4 * keys * H)

    decode = sum(body(B, P + t, True) + B * head for t in range(L))
    sampler = body(P, P / 2, True) + head + decode
    copy_tokens = B * max(L + 1 - min_len, 0) * (suffix_len - 1)
    reward = (body(C, C / 2, adapters_in_reward) + body(B * L + copy_tokens, C + L, False)
              + (B * (L + 1) + copy_tokens) * head)
    pol_fwd = body(P, P / 2, True) + body(B * L, P + L / 2, True) + B * (L + 1) * head
    lora_part = (P + B * L) * 2 * lora_w
    attn_part = (P * P / 2 + B * L * (P + L / 2)) * n_layers * 4 * H
    pol_bwd = (pol_fwd - lora_part - attn_part) + 2 * lora_part + 2 * attn_part
    total = sampler + reward + pol_fwd + pol_bwd
    return {"sampling": sampler, "reward": reward, "policy_forward": pol_fwd, "backward": pol_bwd, "total": total}


def lora_dims(policy) -> int:
    """sum over one layer's LoRA targets of (in + out): the LoRA weights per layer are rank x that."""
    dims, layer0 = 0, None
    for name, mod in policy.named_modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "base_layer") and len(mod.lora_A):
            key = name.split(".layers.")[-1].split(".h.")[-1].split(".")[0]
            layer0 = layer0 if layer0 is not None else key
            if key == layer0:
                w = mod.base_layer.weight
                dims += w.shape[0] + w.shape[1]
    return dims
