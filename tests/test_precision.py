"""`--precision`: its names and `auto`, the bf16-true base model with fp32 islands, and its neutrality.

bf16-true against fp32 on the same tiny model and batch: the outputs are fp32 tensors and agree within the
tolerances below. The tiny models (random init, std 0.3, so their outputs are far from uniform) are much more
sensitive to rounding than a trained one: rounding the base weights to bf16 and computing everything else in fp32
already moves a Llama token's log-prob by up to 0.43 nats (measured), so the tolerances are set from
measurements on these models, with margin, and stated next to them.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import digit_mask
from scipy.stats import spearmanr

from gfnbench import precision
from gfnbench.losses import subtb_loss
from gfnbench.models import adapters_off, add_lora, build_tiny
from gfnbench.precision import (
    cast_frozen_base,
    check_precision,
    has_fast_bf16,
    host_cpu_flags,
    lightning_precision,
    record_precision,
    resolve_precision,
)
from gfnbench.sampling import SamplingConfig, policy_log_probs, sample
from gfnbench.sampling.rewards import context_suffix_log_reward
from gfnbench.sampling.scoring import sequence_log_likelihoods

# Largest bf16-true vs fp32 differences measured on the three tiny models (llama, llama-gqa, gpt2) and the batch
# below drawn with generator seeds 0-4 (15 batches); each tolerance is about twice that. Relative errors are
# |got - want| / max(|want|, 1).
TOKEN_LOGP_ATOL = 1.0        # per-token log_pf / log_pterm, nats: measured max 0.54 (values down to -9.8)
REWARD_RTOL = 0.04           # every-prefix log-rewards (up to ~170 nats) and sequence log-likelihoods: max 0.021
LOSS_RTOL = 0.04             # SubTB loss, relative: measured max 0.017
LEAN_DECODE_ATOL = 2.0       # sampler decode log-probs, 7 steps, lean or HF: measured max 1.04 (seeds 0-3)
MIN_SPEARMAN = 0.99          # rank correlation of the scored prefixes' log-rewards: measured min 0.9993

CPUINFO_AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 x2apic\n"
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu sse avx2 x2apic\n"
CPUINFO_AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 x2apic\n"
CPUINFO_INTEL_NO_AMX = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_bf16 x2apic\n"
CONTEXT = "Q: 1 + 1 = ? A: 2.\nQuestion: 1 + 2 = ? Answer:"
PROMPTS = ["Question: 1 + 2 = ? Answer:", "the cat", "Question: 3 + 4 = ? Answer:"]


# --------------------------------------------------------------------------------------------- the names

@pytest.mark.parametrize("name", ["32-true", "bf16-true", "bf16-mixed"])
def test_each_name_resolves_to_itself(name):
    assert resolve_precision(name) == name
    assert resolve_precision(name, "gpu") == name


@pytest.mark.parametrize("old", ["32", 32])
def test_the_old_spelling_32_means_32_true(old):
    assert resolve_precision(old) == "32-true"
    assert lightning_precision(old) == "32-true"


@pytest.mark.parametrize("bad", ["16", "bf16", "fp32", "", "64-true"])
def test_a_bad_name_is_one_clear_error(bad):
    with pytest.raises(ValueError, match=r"--precision must be one of auto, 32-true, bf16-true, bf16-mixed"):
        resolve_precision(bad)


def test_lightning_runs_bf16_true_at_32_true():
    """Lightning's own bf16-true would cast the LoRA weights and log Z too: gfnbench casts the base itself."""
    assert [lightning_precision(p) for p in ("32-true", "bf16-true", "bf16-mixed")] == \
        ["32-true", "32-true", "bf16-mixed"]


def test_host_cpu_flags_are_the_bf16_ones_sorted(monkeypatch):
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: CPUINFO_AMX)
    assert host_cpu_flags() == ["amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512f"]
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: CPUINFO_PLAIN)
    assert host_cpu_flags() == []
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: "")
    assert host_cpu_flags() == []


def test_cpu_vendor_is_read_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: CPUINFO_AMD)
    assert precision.cpu_vendor() == "AuthenticAMD"
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: CPUINFO_PLAIN)
    assert precision.cpu_vendor() == ""


def test_no_cpuinfo_off_linux(monkeypatch):
    monkeypatch.setattr(precision.sys, "platform", "darwin")
    assert precision.read_cpuinfo() == ""


@pytest.mark.parametrize("cpuinfo, want", [(CPUINFO_AMX, "bf16-true"), (CPUINFO_PLAIN, "32-true"),
                                           (CPUINFO_AMD, "bf16-true"), (CPUINFO_INTEL_NO_AMX, "32-true")])
def test_auto_on_a_cpu_follows_the_measured_fast_bf16_paths(monkeypatch, cpuinfo, want):
    """AMX, and avx512_bf16 on AMD (results/perf_amd.md), were measured faster in bf16; Intel avx512_bf16 alone
    was not."""
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("auto", "auto") == want       # no CUDA device: auto computes on the CPU
    assert has_fast_bf16("cpu") == (want == "bf16-true")


@pytest.mark.parametrize("bf16_gpu, want", [(True, "bf16-true"), (False, "32-true")])
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, bf16_gpu, want):
    monkeypatch.setattr(precision, "read_cpuinfo", lambda: CPUINFO_AMX if not bf16_gpu else CPUINFO_PLAIN)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert resolve_precision("auto", "gpu") == want
    assert resolve_precision("auto", "auto") == want


def test_records_without_the_field_are_32_true():
    assert record_precision({}) == "32-true"
    assert record_precision({"config": {"profile": {"precision": "32"}}}) == "32-true"
    assert record_precision({"config": {"profile": {"precision": "bf16-mixed"}}}) == "bf16-mixed"
    assert record_precision({"precision": "bf16-true", "config": {"profile": {"precision": "bf16-true"}}}) == \
        "bf16-true"
    assert check_precision("auto") == "auto"


def test_a_bad_precision_on_the_command_line_is_one_line_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import gfnbench.runner
    from gfnbench.cli import main

    monkeypatch.setattr(gfnbench.runner, "load_model", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exc:
        main(["run", "--task", "rng", "--method", "gflownet", "--profile", "smoke", "--precision", "bf16",
              "--results_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert "--precision must be one of" in err[0] and err[0].startswith("gfnbench: error: ")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ bf16-true: dtypes

def test_cast_is_a_no_op_for_the_other_precisions():
    lm = build_tiny("llama")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    for name in ("32-true", "32", "bf16-mixed"):
        cast_frozen_base(lm.model, name)
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bf16_true_casts_the_base_and_keeps_lora_log_z_and_adam_state_fp32(arch):
    """Base weights bf16 and unchanged by training; LoRA weights, log Z and every optimizer state fp32, and the
    LoRA weights move in one optimizer step (Lightning at 32-true, as bf16-true asks)."""
    from gfnbench.gflownet import GFlowNetConfig, GFlowNetModule, fit_module
    from gfnbench.methods import RunContext
    from gfnbench.profiles import PROFILES
    from gfnbench.tasks import get_task

    torch.manual_seed(0)
    lm = build_tiny(arch)
    cast_frozen_base(lm.model, "bf16-true")
    rotary = [b for n, b in lm.model.named_buffers() if "inv_freq" in n]
    task = get_task("rng")
    cfg = GFlowNetConfig(loss="tb", lr=1e-2, samples_per_prompt=4, behaviour_mix=(1.0, 0.0, 0.0), lora_rank=4,
                         lora_alpha=8, warmup_steps=0)
    module = GFlowNetModule(task, lm, cfg, task.examples("train"), seed=0)
    named = dict(module.policy.named_parameters())
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert all(p.dtype == torch.bfloat16 for p in base.values())
    assert all(b.dtype == torch.float32 for b in rotary), "the rotary frequencies keep their fp32"
    assert all(p.dtype == torch.float32 for p in module.log_z.parameters())

    fit_module(module, RunContext(seed=0, profile=replace(PROFILES["smoke"], precision="bf16-true")), accumulate=1,
               steps=1)
    after = dict(module.policy.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in lora.items()), "LoRA did not train"
    assert all(after[n].dtype == torch.bfloat16 and torch.equal(after[n], v) for n, v in base.items())
    state = module.trainer.optimizers[0].state
    trained = [p for p in list(module.policy.parameters()) + list(module.log_z.parameters()) if p.requires_grad]
    assert trained and all(p in state for p in trained)
    for p in trained:
        assert p.dtype == torch.float32
        assert state[p]["exp_avg"].dtype == state[p]["exp_avg_sq"].dtype == torch.float32


# ------------------------------------------------------------------------------ bf16-true: neutrality

def _policy(arch: str, name: str):
    """The tiny model at `name`, LoRA added after the cast, adapters away from their zero init."""
    lm = build_tiny(arch, seed=1)
    cast_frozen_base(lm.model, name)
    policy = add_lora(lm.model, rank=4, alpha=8)
    torch.manual_seed(5)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    policy.eval()
    return lm, policy


def _outputs(lm, policy, traj, allowed) -> dict[str, torch.Tensor]:
    """Everything bf16-true must keep fp32, on one batch: policy log-probs, every-prefix rewards (a long suffix:
    the copies pass and its additive bias), sequence log-likelihoods and the SubTB loss."""
    tok = lm.tokenizer
    suffix = [tok(". The answer is 3.", add_special_tokens=False)["input_ids"]] * len(traj)
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in traj.prompts]
    states = [traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist() for b in range(len(traj))]
    with torch.no_grad():
        log_pf, log_pterm = policy_log_probs(policy, traj, allowed, lm.eos_id)
        with adapters_off(policy) as base:
            log_r = context_suffix_log_reward(base, tok, traj, [CONTEXT] * len(traj), suffix, 1)
            seq = sequence_log_likelihoods(base, prompts, states, tok.pad_token_id)
        loss = subtb_loss(log_pf, log_pterm, log_r, traj.lengths, min_len=1)
    return {"log_pf": log_pf, "log_pterm": log_pterm, "log_r": log_r, "seq": seq, "loss": loss}


@pytest.fixture(scope="module", params=["llama", "llama-gqa", "gpt2"])
def both(request):
    """fp32 and bf16-true outputs of one tiny model on one batch (sampled by the fp32 policy)."""
    torch.manual_seed(0)
    lm32, p32 = _policy(request.param, "32-true")
    lm16, p16 = _policy(request.param, "bf16-true")
    allowed = digit_mask(lm32.tokenizer)
    cfg = SamplingConfig(temperature=1.5, min_len=1, max_len=9)
    traj = sample(p32, lm32.tokenizer, PROMPTS, 4, cfg, stop_id=lm32.eos_id, allowed=allowed,
                  generator=torch.Generator().manual_seed(0))
    return _outputs(lm32, p32, traj, allowed), _outputs(lm16, p16, traj, allowed), traj


def _max_error(want: torch.Tensor, got: torch.Tensor, relative: bool = False) -> float:
    """Largest |got - want| (over |want| when `relative`) where want is finite; -inf must stay -inf."""
    assert got.dtype == want.dtype == torch.float32
    assert torch.equal(torch.isinf(got), torch.isinf(want)), "bf16-true changed which entries are -inf"
    fin = torch.isfinite(want)
    err = (got - want)[fin].abs()
    return float((err / want[fin].abs().clamp(min=1.0) if relative else err).max())


def test_bf16_true_policy_log_probs_are_fp32_and_close(both):
    want, got, _ = both
    assert _max_error(want["log_pf"], got["log_pf"]) <= TOKEN_LOGP_ATOL
    assert _max_error(want["log_pterm"], got["log_pterm"]) <= TOKEN_LOGP_ATOL


def test_bf16_true_rewards_and_likelihoods_are_fp32_and_close(both):
    want, got, traj = both
    assert _max_error(want["log_r"], got["log_r"], relative=True) <= REWARD_RTOL
    assert _max_error(want["seq"], got["seq"], relative=True) <= REWARD_RTOL
    j = torch.arange(want["log_r"].shape[1])[None, :]
    scored = torch.isfinite(want["log_r"]) & (j <= traj.lengths[:, None]) & (j >= 1)
    rho = spearmanr(want["log_r"][scored].numpy(), got["log_r"][scored].numpy()).statistic
    assert int(scored.sum()) >= 20 and rho >= MIN_SPEARMAN, (int(scored.sum()), rho)


def test_bf16_true_subtb_loss_is_fp32_and_close(both):
    want, got, _ = both
    assert _max_error(want["loss"].reshape(1), got["loss"].reshape(1), relative=True) <= LOSS_RTOL


def test_bf16_true_head_keeps_its_logsumexp_in_fp32():
    """The blocked output head on bf16 hidden states and a bf16 frozen layer: fp32 out, equal to the float64
    log-softmax of the same (bf16) logits to fp32 rounding, where a bf16 logsumexp would be off by ~1e-2."""
    import gfnbench.sampling.head as head

    torch.manual_seed(0)
    h = (torch.randn(6, 32) * 3).bfloat16()
    w = (torch.randn(50, 32) * 0.5).bfloat16()
    targets = torch.randint(50, (6, 2))
    got = head._BlockedHeadLogProbs.apply(h, w, None, None, targets, 7)
    want = torch.log_softmax(torch.nn.functional.linear(h, w).double(), -1).gather(-1, targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def _decode_log_probs(arch: str, name: str, fast: bool, seed: int = 3) -> tuple[torch.Tensor, object]:
    """[steps, rows, allowed] log-probs of the sampler's decode (the lean Llama one when `fast`, else HF's) over a
    prefill of three left-padded prompts x 2 and six steps of random allowed tokens."""
    from gfnbench.sampling import masked_log_softmax
    from gfnbench.sampling.decoders import _HFDecoder, _LlamaDecoder
    from gfnbench.trajectories import left_pad

    lm, policy = _policy(arch, name)
    tok, allowed = lm.tokenizer, digit_mask(lm.tokenizer)
    ids, mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS], tok.pad_token_id)
    decoder = _LlamaDecoder(policy, allowed) if fast else _HFDecoder(policy)

    def log_probs(logits):
        assert logits.dtype == torch.float32
        return torch.log_softmax(logits, -1) if fast else masked_log_softmax(logits, allowed)[:, allowed]

    g, cand = torch.Generator().manual_seed(seed), allowed.nonzero().squeeze(-1)
    with torch.no_grad():
        out = [log_probs(decoder.prefill(ids, mask, 2, 8))]
        attn = mask.repeat_interleave(2, 0)
        for _ in range(6):
            attn = torch.cat([attn, torch.ones(len(attn), 1, dtype=attn.dtype)], 1)
            pos = attn.sum(-1) - 1
            out.append(log_probs(decoder.step(cand[torch.randint(len(cand), (len(attn),), generator=g)], attn, pos)))
    return torch.stack(out), decoder


@pytest.mark.parametrize("arch", ["llama", "llama-gqa"])
def test_bf16_true_lean_decoder_runs_in_bf16_and_returns_fp32(arch):
    """The sampler's Llama decode on a bf16 base: its KV cache bf16 (the weights' dtype), its logits fp32, and
    as close to the fp32 decode as HF's bf16 decode is (within the tolerance). bf16-true never merges the fp32
    adapters into the bf16 weights (seed 3's llama decode went 1.05 nats off fp32 so, against HF's 0.42): the
    lean decoder runs them as `FusedLowRank` (adapter product apart, one rounding), at most as far off fp32 as
    peft's own unmerged layers are in the same decoder."""
    from gfnbench.sampling.model_parts import FusedLowRank

    want, _ = _decode_log_probs(arch, "32-true", fast=False)
    lean, decoder = _decode_log_probs(arch, "bf16-true", fast=True)
    hf, _ = _decode_log_probs(arch, "bf16-true", fast=False)
    assert decoder.k_buf[0].dtype == torch.bfloat16
    assert all(isinstance(p, FusedLowRank) for p in decoder.qkv + decoder.o), "fp32 adapters merged into bf16"
    assert decoder.qkv[0].w.dtype == decoder.qkv[0].a.dtype == torch.bfloat16
    for got in (lean, hf):
        assert float((got - want).abs().max()) <= LEAN_DECODE_ATOL
    # as near fp32 on average as HF's bf16 decode (measured mean |delta| over seeds 0-3: fused 0.050 / 0.058,
    # peft unmerged 0.054 / 0.055, HF 0.054 / 0.058 for llama / llama-gqa; seed 3 alone 0.052 vs 0.048, 0.063 vs
    # 0.061): bf16 rounding noise, not a lost adapter (merged, the max was 1.05)
    assert float((lean - want).abs().mean()) <= 1.25 * float((hf - want).abs().mean())


# ------------------------------------------------------------------------------------------- a real run

def test_a_bf16_true_smoke_run_records_its_precision_and_cpu_flags(tmp_path):
    from gfnbench.runner import run

    out = run("rng", "gflownet", 0, "smoke", results_dir=str(tmp_path), compute={"precision": "bf16-true"})
    record = json.loads((out / "record.json").read_text())
    assert record["precision"] == "bf16-true"
    assert record["config"]["profile"]["precision"] == "bf16-true"
    assert record["machine"]["host_cpu_flags"] == host_cpu_flags()
    assert all(isinstance(f, str) for f in record["machine"]["host_cpu_flags"])
    assert record["machine"]["cpu_vendor"] == precision.cpu_vendor()
    assert all(v == v for v in record["metrics"]["test"].values()), "a NaN metric"


# ------------------------------------------------------------------------------------------- leaderboard

def _write_runs(root, precisions: dict[str, str | None]) -> None:
    """Two seeds of each method, at its precision (None: a record written before the field existed)."""
    from gfnbench.records import run_dir, write_run

    for method, name in precisions.items():
        for seed in (0, 1):
            record = {"task": "arith", "method": method, "seed": seed, "profile": "cpu", "model": "m",
                      "scoring_model": "m", "data": "d", "metrics": {"test": {"accuracy": 0.1 * seed}},
                      "config": {}, "git_commit": "abc", "versions": {}, "wall_time_s": 1.0}
            if name is not None:
                record["precision"] = name
            write_run(run_dir(root, "arith", method, seed), record, [{"text": "x"}])


def test_the_table_states_its_precision_and_refuses_a_mix_unless_allowed(tmp_path):
    from gfnbench.leaderboard import write_leaderboard

    _write_runs(tmp_path / "one", {"greedy": None, "sft": "32-true"})
    md = write_leaderboard(tmp_path / "one", "arith")[0].read_text()
    assert "\n- precision: 32-true\n" in md
    _write_runs(tmp_path / "mix", {"greedy": None, "sft": "bf16-true"})
    with pytest.raises(ValueError, match=r"mix precisions \(32-true: greedy/seed0, greedy/seed1; bf16-true: "
                                         r"sft/seed0, sft/seed1\).*--allow_mixed_precision true"):
        write_leaderboard(tmp_path / "mix", "arith")
    assert not (tmp_path / "mix" / "arith.md").exists()
    md = write_leaderboard(tmp_path / "mix", "arith", allow_mixed_precision=True)[0].read_text()
    assert "\n- precision: mixed, per row: greedy 32-true; sft bf16-true\n" in md


def test_the_table_header_names_each_hosts_cores_and_bf16_flags():
    from gfnbench.tables import machine_phrase

    amx = {"machine": {"cpu_count": 2, "host_cpu_flags": ["amx_bf16", "avx512f"]}}
    plain = {"machine": {"cpu_count": 4, "host_cpu_flags": []}}
    assert machine_phrase([amx, amx]) == "2 cores, bf16 CPU flags: amx_bf16, avx512f"
    assert machine_phrase([amx, plain, {}]) == ("2 cores, bf16 CPU flags: amx_bf16, avx512f; 4 cores, bf16 CPU "
                                                "flags: none; not recorded")


def test_bf16_attention_runs_sdpa_on_fp32_q_k_v(monkeypatch):
    """After the cast, the tiny Llama's attention is the fp32 SDPA island: the config names it, SDPA receives fp32
    q, k, v (plain bf16 SDPA receives bf16), the layer output is back in bf16, and the logits stay close to fp32.
    GPT-2 on eager attention is left alone."""
    import copy

    import transformers.integrations.sdpa_attention as sdpa
    from transformers import AttentionInterface

    from gfnbench.precision import FP32_ATTENTION, use_fp32_attention

    seen = []
    real = sdpa.sdpa_attention_forward

    def spy(module, query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        out, weights = real(module, query, key, value, *args, **kwargs)
        return out, weights

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    # transformers' registry holds its own reference to the function, which plain "sdpa" models call
    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", spy)
    lm = build_tiny("llama")
    fp32 = copy.deepcopy(lm.model).eval()
    bf16 = copy.deepcopy(lm.model).eval()
    precision.cast_frozen_base(bf16, "bf16-true")
    assert bf16.config._attn_implementation == FP32_ATTENTION
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        want = fp32(ids).logits
        seen.clear()
        got = bf16(ids).logits
    assert seen and all(d == (torch.float32,) * 3 for d in seen), seen
    assert got.dtype == torch.bfloat16 and (got.float() - want).abs().mean() < 0.05   # bf16 logits of size ~5
    plain = copy.deepcopy(lm.model).eval().to(torch.bfloat16)     # transformers' own SDPA, bf16 throughout
    with torch.no_grad():
        seen.clear()
        plain(ids)
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen), seen
    gpt2 = build_tiny("gpt2").model
    gpt2.config._attn_implementation = "eager"
    assert not use_fp32_attention(gpt2) and gpt2.config._attn_implementation == "eager"
