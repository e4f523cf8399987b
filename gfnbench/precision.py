"""A run's numeric precision: the names `--precision` takes, `auto` resolved on this host, and the bf16 base cast.

Names are Lightning's: `32-true` (everything fp32, the reference; the old spelling `32` means the same),
`bf16-mixed` (fp32 weights, training forward passes under bf16 autocast; evaluation in the model's dtype) and
`bf16-true`, which in gfnbench means a bf16 base model with fp32 islands:

- bf16: the frozen base weights, cast once right after the model loads and before LoRA is added, so the policy
  body, the reward passes (adapters off), the reference model of logp_ref and the sampler all run in bf16.
- fp32: the LoRA weights and their optimizer state (peft creates adapter weights in fp32 and, with its default
  `autocast_adapter_dtype=True`, keeps them fp32 on a bf16 base), log Z and every scalar head, every
  log-softmax, logsumexp and sum of log-probs, the losses and the reward sums: the code upcasts logits or
  hidden states (`.float()`) right before each of those, so the whole model is never silently upcast.

Lightning's Trainer then runs at "32-true" (`lightning_precision`): its own "bf16-true" would cast the LoRA
weights and log Z to bf16 as well. `auto` picks `bf16-true` where the hardware was measured to compute bf16 fast
(a CPU with AMX, an AMD CPU with avx512_bf16, a GPU that supports bf16) and `32-true` elsewhere.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:       # torch is imported where it is used: the leaderboard reads precisions without it
    import torch

PRECISIONS = ("auto", "32-true", "bf16-true", "bf16-mixed")
ALIASES = {"32": "32-true"}           # the spelling of committed records and profiles
RESOLVED = ("32-true", "bf16-true", "bf16-mixed")
BF16_CPU_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512f")
LIGHTNING_PRECISION = {"32-true": "32-true", "bf16-true": "32-true", "bf16-mixed": "bf16-mixed"}
CPUINFO = Path("/proc/cpuinfo")


def check_precision(name: str) -> str:
    """The canonical name of a `--precision` value (`auto` kept as is); one clear error for anything else."""
    name = ALIASES.get(str(name), str(name))
    if name not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)} (or 32, meaning 32-true), "
                         f"got {name!r}")
    return name


def resolve_precision(name: str, accelerator: str = "cpu") -> str:
    """The precision a run uses: `name` checked and canonical, `auto` decided by this host's hardware."""
    name = check_precision(name)
    if name != "auto":
        return name
    return "bf16-true" if has_fast_bf16(accelerator) else "32-true"


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo; empty off Linux or where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return ""
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def cpuinfo_values(field: str) -> list[str]:
    """Every value of one /proc/cpuinfo field (one per processor), stripped."""
    out = []
    for line in read_cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == field:
            out.append(value.strip())
    return out


def host_cpu_flags() -> list[str]:
    """The CPU flags that decide bf16 speed on this host (AMX and AVX-512 ones), sorted; recorded with every run."""
    flags = {flag for value in cpuinfo_values("flags") for flag in value.split()}
    return sorted(flags.intersection(BF16_CPU_FLAGS))


def computes_on_cpu(accelerator: str) -> bool:
    import torch

    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def cpu_vendor() -> str:
    """The CPU's vendor_id ("GenuineIntel", "AuthenticAMD"); empty where /proc/cpuinfo does not say."""
    return next(iter(cpuinfo_values("vendor_id")), "")


def fast_cpu_bf16_path(flags: list[str], vendor: str) -> str | None:
    """Which measured fast bf16 path this CPU has (None: none measured). AMX: 2048^3 matmul 6.3x fp32, the
    GFlowNet step 1.4-1.6x (results/perf_amx.md). avx512_bf16 on AMD: matmul 4.0x, step 2.0-2.3x
    (results/perf_amd.md). avx512_bf16 on Intel without AMX stays fp32: slower under autocast there
    (shared/environment.md), and bf16 weights were never measured on such a host."""
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags and vendor == "AuthenticAMD":
        return "avx512_bf16 on AMD"
    return None


def has_fast_bf16(accelerator: str = "cpu") -> bool:
    """Whether bf16 matmuls are fast where the run computes: a measured fast path on a CPU (`fast_cpu_bf16_path`),
    bf16 support on a GPU."""
    import torch

    if computes_on_cpu(accelerator):
        return fast_cpu_bf16_path(host_cpu_flags(), cpu_vendor()) is not None
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cast_frozen_base(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The base model with its floating-point weights in bf16 for `bf16-true` (call before LoRA is added, so the
    adapters stay fp32); the model untouched otherwise. Buffers (rotary frequencies, masks) keep their dtype.
    Its attention then runs in fp32 (`use_fp32_attention`)."""
    import torch

    if check_precision(precision) != "bf16-true":
        return model
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)
    use_fp32_attention(model)
    return model


FP32_ATTENTION = "gfnbench_sdpa_fp32"


def _sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on fp32 copies of q, k, v (and a float mask), the output back in q's dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dtype = query.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                          **kwargs)
    return out.to(dtype), weights


def use_fp32_attention(model) -> bool:
    """Run a bf16 model's SDPA attention in fp32: an fp32 island that is also faster on the CPU, whose bf16 SDPA
    backward is slow (SmolLM2-135M, 16 x 80 tokens, 2 threads: backward 0.81 s with bf16 SDPA, 0.59 s with it in
    fp32). Registered under its own name (`FP32_ATTENTION`) in transformers' attention and mask registries, so
    no other model changes; only a model on plain "sdpa" is switched. Returns whether it switched."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FP32_ATTENTION, _sdpa_in_fp32)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FP32_ATTENTION, sdpa_mask)
    model.set_attn_implementation(FP32_ATTENTION)
    return config._attn_implementation == FP32_ATTENTION


def lightning_precision(precision: str) -> str:
    """What Lightning's Trainer is given: gfnbench does bf16-true itself (base weights only), so Lightning runs
    32-true for it."""
    return LIGHTNING_PRECISION[resolve_precision(precision)]


def record_precision(record: dict) -> str:
    """The precision a run record was computed at, canonical: its `precision` field; in a record written before
    that field existed, its profile's (config.profile.precision), else "32-true" (fp32, all there was then)."""
    profile = ((record.get("config") or {}).get("profile") or {})
    name = str(record.get("precision") or profile.get("precision") or "32-true")
    return ALIASES.get(name, name)
