"""Which weights a model applies where: the effective (LoRA-merged) weight of a layer, and the (body, output
layer) split that lets the decoders and the teacher-forced passes apply the output layer only where needed."""
from __future__ import annotations

import torch
from torch import Tensor


def effective_linear(module) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) that `module` applies right now: a plain Linear's own, or a peft LoRA Linear's base weight
    plus its active adapters' B A * scaling (nothing inside `adapters_off`). None when the layer does something
    else (a LoRA variant such as DoRA, dropout in training mode, a non-Linear base) or its adapters are kept in a
    wider dtype than its base weight (bf16-true), so the caller runs it."""
    if isinstance(module, torch.nn.Linear):
        return module.weight, module.bias
    base = getattr(module, "base_layer", None)
    if not isinstance(base, torch.nn.Linear) or not hasattr(module, "lora_A"):
        return None
    weight = base.weight
    if module.disable_adapters or module.merged:
        return weight, base.bias
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if name in getattr(module, "lora_variant", {}) or (module.training and
                                                          not isinstance(module.lora_dropout[name], torch.nn.Identity)):
            return None
        if module.lora_A[name].weight.dtype != weight.dtype:    # fp32 LoRA on a bf16 base (bf16-true): merged
            return None     # into bf16 it lost the adapter's low bits (lean decode 1.05 vs 0.38 nats off fp32)
        weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


def low_rank_parts(module) -> tuple[Tensor, Tensor | None, list[tuple[Tensor, Tensor]]] | None:
    """(base weight, bias, [(A, B * scaling)] of the active adapters) of a peft LoRA Linear whose adapters are plain
    (no variant, no dropout in training mode), or None: what `FusedLowRank` needs to run the layer in one pass."""
    base = getattr(module, "base_layer", None)
    if not isinstance(base, torch.nn.Linear) or not hasattr(module, "lora_A"):
        return None
    if module.disable_adapters or module.merged:
        return base.weight, base.bias, []
    pairs = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if name in getattr(module, "lora_variant", {}) or (module.training and
                                                          not isinstance(module.lora_dropout[name], torch.nn.Identity)):
            return None
        pairs.append((module.lora_A[name].weight, module.lora_B[name].weight * module.scaling[name]))
    return base.weight, base.bias, pairs


class FusedLowRank:
    """Several LoRA Linears that read the same input (q, k, v) as two matmuls in the base weights' dtype:
    u = [A_1; A_2; ...] x, then y = [W | blockdiag(B_i s_i)] [x; u]. For fp32 adapters on a bf16 base (bf16-true)
    the adapter's product is formed apart from W (merged into bf16 weights its small entries round away: seed 3's
    tiny llama decode went 1.05 nats off fp32, against 0.38 unmerged) and summed with W x inside one fp32-accumulated
    matmul, rounded once; peft's unmerged path rounds W x, then the sum. Two matmuls a layer instead of peft's
    three per projection plus their fp32 casts: bf16 decode is bound by the count of small ops."""

    def __init__(self, parts: list[tuple[Tensor, Tensor | None, list[tuple[Tensor, Tensor]]]], dtype: torch.dtype):
        outs = [w.shape[0] for w, _, _ in parts]
        ranks = [sum(a.shape[0] for a, _ in pairs) for _, _, pairs in parts]
        self.a = torch.cat([a for _, _, pairs in parts for a, _ in pairs]).to(dtype) if sum(ranks) else None
        up = parts[0][0].new_zeros(sum(outs), sum(ranks), dtype=dtype)
        row, col = 0, 0
        for (_, _, pairs), out in zip(parts, outs):
            for _, b in pairs:
                up[row:row + out, col:col + b.shape[1]] = b.to(dtype)
                col += b.shape[1]
            row += out
        self.w = torch.cat([torch.cat([w.to(dtype) for w, _, _ in parts]), up], dim=1)
        biases = [b for _, b, _ in parts]
        self.bias = None if all(b is None for b in biases) else torch.cat(
            [(b if b is not None else w.new_zeros(w.shape[0])).to(dtype) for w, b, _ in parts])

    def __call__(self, x: Tensor) -> Tensor:
        if self.a is None:
            return torch.nn.functional.linear(x, self.w, self.bias)
        u = torch.nn.functional.linear(x, self.a)
        return torch.nn.functional.linear(torch.cat([x, u], dim=-1), self.w, self.bias)


def fused_low_rank(modules, dtype: torch.dtype) -> FusedLowRank | None:
    """`FusedLowRank` over these LoRA Linears, or None when one of them is not a plain LoRA Linear."""
    parts = [low_rank_parts(m) for m in modules]
    return None if any(p is None for p in parts) else FusedLowRank(parts, dtype)


# Architectures whose logits are exactly lm_head(final hidden state): for them the teacher-forced passes run the
# decoder body and apply the output layer only where (and to the vocabulary rows that) a log-prob is needed.
PLAIN_HEAD = {"llama", "gpt2", "qwen2", "mistral", "gptj"}


def body_and_head(model):
    """(decoder body, output layer) of a plain-head causal LM (through a peft wrapper: the LoRA layers live in the
    body's modules, so calling the body applies them, or not inside `adapters_off`); None for any other model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in PLAIN_HEAD:
        return None
    try:
        body, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if body is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return None
    head = effective_linear(head)          # (weight, bias), adapters included if the output layer has any
    return None if head is None else (body, head)


def runner(model, parts) -> tuple:
    """(what to call, the output field it gives): the body's hidden states when the model has a plain head (the
    caller applies the head in blocks), else the whole model's logits."""
    return (parts[0], "last_hidden_state") if parts is not None else (model, "logits")
