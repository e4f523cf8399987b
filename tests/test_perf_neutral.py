"""The fast paths of the GFlowNet step change no number: each is compared with a straightforward reference
(the previous full-batch pass, kept below, or plain per-row HF forwards) to 1e-5 in fp32, on
batches with mixed lengths, tool-inserted tokens, replayed (buffer) trajectories and LoRA adapters that are not
at their zero init."""
from __future__ import annotations

import pytest
import torch
from helpers import digit_mask
from torch import Tensor

from gfnbench.losses import subtb_loss
from gfnbench.models import adapters_off, add_lora, build_tiny
from gfnbench.sampling import (
    SamplingConfig,
    every_prefix_log_reward,
    inverse_cdf,
    masked_log_softmax,
    policy_log_probs,
    positions_from_mask,
    sample,
    state_token_log_probs,
)
from gfnbench.trajectories import Trajectories, from_rows, left_pad

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def small_head_blocks(monkeypatch):
    """37 output-layer columns per block: the tiny model's 400-token vocabulary spans 11 blocks, the last one
    partial, so every pass here runs the blocked logsumexp and its recomputing backward across block edges."""
    import gfnbench.sampling.head as head

    monkeypatch.setattr(head, "HEAD_BLOCK", 37)


def forward_tail(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, keep: int) -> Tensor:
    """Logits of the last `keep` positions only: the prompt's logits would cost B*P*V floats for nothing."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=keep)
    return out.logits[:, -keep:].float()


def reference_policy_log_probs(model, traj: Trajectories, allowed: Tensor | None,
                                stop_id: int) -> tuple[Tensor, Tensor]:
    """The straightforward pass `policy_log_probs` replaced: every row runs prompt + state, full-vocabulary
    logits."""
    S = traj.state_ids.shape[1]
    input_ids = torch.cat([traj.prompt_ids, traj.state_ids], dim=1)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    logp = masked_log_softmax(forward_tail(model, input_ids, mask, positions_from_mask(mask), S + 1), allowed)
    token_logp = logp[:, :S].gather(-1, traj.state_ids[:, :, None]).squeeze(-1)
    pos = traj.action_positions().clamp(max=max(S - 1, 0))
    log_pf = token_logp.gather(1, pos) if S else token_logp.new_zeros(len(traj), traj.max_actions)
    log_pf = torch.where(traj.action_mask(), log_pf, torch.zeros_like(log_pf))
    stop_logp = logp[:, :, stop_id]
    log_pterm = stop_logp.gather(1, traj.state_ends())
    j = torch.arange(traj.max_actions + 1)[None, :]
    forced_end = (j == traj.lengths[:, None]) & ~traj.stopped[:, None]
    log_pterm = torch.where(forced_end | (j > traj.lengths[:, None]), torch.zeros_like(log_pterm), log_pterm)
    return log_pf, log_pterm


def reference_state_token_log_probs(model, traj: Trajectories) -> Tensor:
    """The full-batch pass `state_token_log_probs` replaced."""
    S = traj.state_ids.shape[1]
    if S == 0:
        return torch.zeros(len(traj), 0)
    input_ids = torch.cat([traj.prompt_ids, traj.state_ids], dim=1)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    logits = forward_tail(model, input_ids, mask, positions_from_mask(mask), S + 1)
    logp = torch.log_softmax(logits[:, :S], dim=-1)
    return logp.gather(-1, traj.state_ids[:, :, None]).squeeze(-1) * traj.state_mask


def most_tokens(allowed: Tensor) -> Tensor:
    """`allowed` plus three of every four other tokens: most of the vocabulary, so the output layer runs whole and
    masks (`sampling.few_allowed`) instead of slicing the allowed rows."""
    return allowed | (torch.arange(len(allowed)) % 4 != 0)


def _tool(text):
    return " 7" if text.rstrip().endswith("=") else None


@pytest.fixture(scope="module", params=["llama", "llama-gqa", "gpt2"])
def lora_lm(request):
    lm = build_tiny(request.param, seed=1)
    policy = add_lora(lm.model, rank=4, alpha=8)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)      # adapters that change the function, so "adapters off" is a real switch
    policy.eval()
    return lm, policy


def _batches(lm, policy):
    """A sampled batch (one shared prompt, tools, mixed lengths, forced and chosen stops), a two-prompt batch
    (left-padded prompts of different lengths) and a replayed batch rebuilt from stored states."""
    tok = lm.tokenizer
    allowed = digit_mask(tok)
    g = torch.Generator().manual_seed(0)
    cfg = SamplingConfig(temperature=1.5, min_len=1, max_len=9)
    shared = sample(policy, tok, ["Question: 1 + 2 = ? Answer:"], 6, cfg, stop_id=lm.eos_id, allowed=allowed,
                    tool=_tool, generator=g)
    two = sample(policy, tok, ["Question: 1 + 2 = ? Answer:", "the cat"], 3, cfg, stop_id=lm.eos_id,
                 allowed=allowed, tool=_tool, generator=g)
    states = [shared.state_ids[b, : int(shared.state_mask[b].sum())].tolist() for b in range(len(shared))]
    acts = [shared.is_action[b, : len(states[b])].tolist() for b in range(len(shared))]
    prompt_ids = tok("Question: 1 + 2 = ? Answer:", add_special_tokens=False)["input_ids"]
    # replayed rows cut to 1..6 actions (a tool output stays with the action that triggered it): mixed lengths
    cut_s, cut_a = [], []
    for b, k in enumerate([1, 6, 3, 2, 5, 4]):
        last = [i for i, a in enumerate(acts[b]) if a][min(k, sum(acts[b])) - 1]
        end = last + 1
        while end < len(acts[b]) and not acts[b][end]:
            end += 1
        cut_s.append(states[b][:end])
        cut_a.append(acts[b][:end])
    n = [sum(a) for a in cut_a]
    replay = from_rows(["q"] * 6, [0] * 6, [prompt_ids] * 6, cut_s, cut_a, [True, False, True, True, False, True],
                       [[0.0] * k for k in n], [[0.0] * (k + 1) for k in n], ["x"] * 6, tok.pad_token_id)
    assert len(set(replay.lengths.tolist())) > 2, "test data too weak: equal lengths"
    assert (~shared.is_action[shared.state_mask.bool()]).any(), "test data too weak: the tool never fired"
    return allowed, {"shared": shared, "two_prompts": two, "replay": replay}


def _assert_grad_close(got, want, msg):
    """Gradients sum many terms in a different order, so the error scales with the tensor's size, not with each
    element: max |got - want| <= 1e-5 * max(1, max |want|)."""
    err = float((got - want).abs().max())
    assert err <= 1e-5 * max(1.0, float(want.abs().max())), (msg, err, float(want.abs().max()))


def _grads(policy, loss):
    params = [p for p in policy.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def test_policy_log_probs_and_gradients_equal_the_full_batch_pass(lora_lm):
    lm, policy = lora_lm
    allowed, batches = _batches(lm, policy)
    # eval mode: GPT-2's own dropout would make any two passes differ; gradients flow the same
    most = most_tokens(allowed)
    assert 2 * int(most.sum()) > len(most) and 2 * int(allowed.sum()) < len(allowed)
    for name, traj in batches.items():
        for mask in (allowed, most, None):
            new = policy_log_probs(policy, traj, mask, lm.eos_id)
            ref = reference_policy_log_probs(policy, traj, mask, lm.eos_id)
            for a, b in zip(new, ref):
                torch.testing.assert_close(a, b, **TOL, msg=name)
            log_r = -torch.rand(len(traj), traj.max_actions + 1, generator=torch.Generator().manual_seed(1)) * 5
            loss_new = subtb_loss(*new, log_r, traj.lengths)
            loss_ref = subtb_loss(*ref, log_r, traj.lengths)
            torch.testing.assert_close(loss_new, loss_ref, **TOL)
            for gn, gr in zip(_grads(policy, loss_new), _grads(policy, loss_ref)):
                _assert_grad_close(gn, gr, name)


def test_policy_log_probs_equal_per_row_forwards(lora_lm):
    """Independent of both batched passes: each row alone through the HF model."""
    lm, policy = lora_lm
    allowed, batches = _batches(lm, policy)
    traj = batches["two_prompts"]
    with torch.no_grad():
        log_pf, log_pterm = policy_log_probs(policy, traj, allowed, lm.eos_id)
        for b in range(len(traj)):
            prompt = traj.prompt_ids[b][traj.prompt_mask[b].bool()].tolist()
            state = traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist()
            logits = policy(input_ids=torch.tensor([prompt + state])).logits[0].float()
            logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
            acts = [i for i, a in enumerate(traj.is_action[b, : len(state)].tolist()) if a]
            want = torch.stack([logp[len(prompt) + i - 1, state[i]] for i in acts])
            torch.testing.assert_close(log_pf[b, : len(acts)], want, **TOL)
            ends = traj.state_ends()[b]
            n = int(traj.lengths[b])
            want_t = torch.stack([logp[len(prompt) + int(ends[j]) - 1, lm.eos_id] for j in range(n + 1)])
            if not bool(traj.stopped[b]):
                want_t[n] = 0.0
            torch.testing.assert_close(log_pterm[b, : n + 1], want_t, **TOL)


@pytest.mark.parametrize("min_len", [0, 2])
@pytest.mark.parametrize("suffixes", ["one_token", "long", "mixed"])
def test_every_prefix_reward_equals_per_row_forwards(lora_lm, monkeypatch, suffixes, min_len):
    """log p(s_j, suffix | context) for every scored prefix, against one plain forward per (row, prefix):
    single-token suffixes (read from the state pass), long ones (a copy per scored prefix, 3 copies per row of
    the copies pass, so a row's copies span several), and rows whose suffixes differ in length (1, 2 and 10 tokens)
    and whose contexts differ (left padding). Prefixes shorter than min_len read -inf, those past a row's length
    0; the three batches have mixed lengths, tool tokens and a replayed batch."""
    import gfnbench.sampling.rewards as rewards

    monkeypatch.setattr(rewards, "COPIES_PER_ROW", 3)
    lm, policy = lora_lm
    tok = lm.tokenizer
    _, batches = _batches(lm, policy)
    texts = {"one_token": ["."], "long": [". The answer is 3."], "mixed": [".", ". The answer is 3.", " 3."]}
    for name, traj in batches.items():
        B = len(traj)
        ctx = ["Q: 1 + 1 = ? A: 2.\nQuestion: 1 + 2 = ? Answer:"] * B if name == "shared" else \
              [("x y " * (b % 3)) + "Question: 1 + 2 = ? Answer:" for b in range(B)]
        c_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in ctx]
        suffix = [tok(texts[suffixes][b % len(texts[suffixes])], add_special_tokens=False)["input_ids"]
                  for b in range(B)]
        if suffixes == "one_token":
            suffix = [s[-1:] for s in suffix]
        ctx_ids, ctx_mask = left_pad(c_ids, tok.pad_token_id)
        with torch.no_grad(), adapters_off(policy) as base:
            got = every_prefix_log_reward(base, ctx_ids, ctx_mask, traj, suffix, min_len)
            ends = traj.state_ends()
            want = torch.zeros_like(got)
            for b in range(B):
                state = traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist()
                for j in range(int(traj.lengths[b]) + 1):
                    seq = c_ids[b] + state[: int(ends[b, j])] + suffix[b]
                    lp = torch.log_softmax(base(input_ids=torch.tensor([seq])).logits[0].float(), -1)
                    want[b, j] = sum(lp[i - 1, seq[i]] for i in range(len(c_ids[b]), len(seq)))
            want[:, :min_len] = float("-inf")
        if suffixes == "mixed":
            assert {len(s) for s in suffix} == {1, 2, 10}, "test data: the three suffix lengths"
        assert int(traj.lengths.max()) + 1 - min_len > 3, "test data too weak: no row spans two copies-pass rows"
        torch.testing.assert_close(got, want, **TOL, msg=f"{name} {suffixes}")


@pytest.mark.parametrize("block", [5, 37, 400, 4096])
@pytest.mark.parametrize("masked", [False, True])
def test_blocked_head_log_probs_equal_log_softmax_in_float64(block, masked):
    """Values and the hidden states' gradient against torch's log_softmax + gather in float64 (an independent
    reference), with blocked columns, a blocked target (-inf; its upstream gradient still reaches the
    logsumexp, as through the masked softmax) and two targets per position."""
    from gfnbench.sampling import column_mask_bias
    from gfnbench.sampling.head import _BlockedHeadLogProbs

    g = torch.Generator().manual_seed(0)
    N, H, V = 7, 6, 23
    h = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
    w, b = torch.randn(V, H, generator=g, dtype=torch.float64), torch.randn(V, generator=g, dtype=torch.float64)
    blocked = (torch.arange(V) % 3 == 1) if masked else None
    targets = torch.randint(0, V, (N, 2), generator=g)
    targets[:, 1] = 0
    if masked:
        targets[2, 0] = 1                               # a blocked target
    upstream = torch.randn(N, 2, generator=g, dtype=torch.float64)
    col_bias = column_mask_bias(~blocked).double() if masked else None
    got = _BlockedHeadLogProbs.apply(h, w, b, col_bias, targets, block)
    (grad_got,) = torch.autograd.grad((got * upstream).sum(), h)
    logits = h @ w.T + b
    if masked:
        logits = logits.masked_fill(blocked, float("-inf"))
    want = torch.log_softmax(logits, -1).gather(-1, targets)
    (grad_want,) = torch.autograd.grad((want * upstream).sum(), h)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grad_got, grad_want, atol=1e-12, rtol=1e-12)
    assert bool(got[2, 0].isinf()) == masked


def test_perf_quick_mode_runs(tmp_path):
    import gfnbench_perf as perf

    out = perf.main(["--quick", "--out", str(tmp_path / "perf.md")])
    text = (tmp_path / "perf.md").read_text()
    assert "gfnbench" in text and "naive" in text
    assert out["workloads"]["continuation"]["ratio_vs_naive"] > 0
    assert "Floor of this step on this machine" in text
    assert out["workloads"]["continuation"]["decode_floor"]["read_bandwidth_gbs"] > 0
    assert "continuation in bf16-true" in text and out["precision"]["bf16_vs_fp32"] > 0
    assert out["eval"]["bf16_vs_fp32"] > 0 and out["wall_s"] > 0


def test_step_floor_by_hand():
    """2 decode steps x 1 GB at 10 GB/s = 0.2 s of reads; the other phases' 4 GFLOP at 1 GFLOP/s = 4 s (the
    sampling phase's own FLOPs are not counted: its reads are its floor)."""
    from gfnbench_perf import step_floor

    w = {"decode_floor": {"weight_bytes_per_step": 1e9, "decode_steps": 2, "read_bandwidth_gbs": 10.0},
         "per_phase_flops": {"sampling": 5e9, "reward": 1e9, "backward": 3e9},
         "pipelines": {"naive": {"median_s": 3.0}}, "minimal_flops": {"total": 2e9}}
    f = step_floor(w, peak=1.0)
    assert f["sampling_reads_s"] == pytest.approx(0.2)
    assert f["other_matmuls_s"] == pytest.approx(4.0)
    assert f["total_s"] == pytest.approx(4.2)
    assert f["naive_over_floor"] == pytest.approx(3.0 / 4.2)
    assert f["floor_x_minimal_limit"] == pytest.approx(2.1)


def test_bf16_decode_floor_reads_half_the_bytes():
    """The bf16 step floor's weight reads come from the weights' element size: exactly half of fp32's."""
    import copy

    from gfnbench.precision import cast_frozen_base
    from gfnbench_perf.floors import decode_matmul_floor

    model = build_tiny("llama").model
    allowed = torch.ones(model.config.vocab_size, dtype=torch.bool)
    fp32 = decode_matmul_floor(model, 4, allowed, repeats=1)
    bf16 = decode_matmul_floor(cast_frozen_base(copy.deepcopy(model), "bf16-true"), 4, allowed, repeats=1)
    assert bf16["weight_bytes_per_step"] * 2 == fp32["weight_bytes_per_step"]


def test_bf16_summary_and_targets_by_hand():
    """Medians 6 s (fp32 gfnbench), 12 s (fp32 naive), 1.5 s (bf16 gfnbench), 6 s (bf16 naive): bf16 is 4x fp32
    and 4x its naive; 1.5 s against a 1 s minimal-work limit is 1.5x; eval 100 -> 250 tokens/s is 2.5x."""
    from gfnbench_perf.precisions import bf16_targets, check_labels, pipeline_key, precision_summary

    def pipes(g, n):
        return {"gfnbench": {"median_s": g, "x_minimal_limit": g / 1.0}, "naive": {"median_s": n}}

    w = {"pipelines": pipes(6.0, 12.0), "ratio_vs_naive": 2.0, "bf16_vs_fp32": 4.0,
         "bf16": {"pipelines": pipes(1.5, 6.0), "ratio_vs_naive": 4.0}}
    result = {"workloads": {"continuation": w}, "matmul_peak_gflops": 300.0, "matmul_peak_gflops_bf16": 1200.0,
              "eval": {"bf16_vs_fp32": 2.5, "ratio_vs_generate_bf16": 1.2}}
    s = precision_summary(result)
    assert (s["bf16_vs_fp32"], s["bf16_vs_naive_bf16"], s["bf16_x_minimal_limit"]) == (4.0, 4.0, 1.5)
    assert s["naive_bf16_vs_fp32"] == 2.0 and s["eval_bf16_vs_fp32"] == 2.5
    assert [t["met"] for t in bf16_targets(s)] == [True, True, True, True]
    w["bf16_vs_fp32"], result["eval"]["bf16_vs_fp32"] = 2.9, 1.9
    assert [t["met"] for t in bf16_targets(precision_summary(result))] == [False, True, True, False]
    assert pipeline_key("naive", "bf16") == "naive_bf16" and pipeline_key("naive", "fp32") == "naive"
    assert check_labels("fp32, bf16") == ("fp32", "bf16")
    with pytest.raises(ValueError):
        check_labels("bf16")


def test_no_amx_host_is_said_in_one_line():
    from gfnbench_perf.precisions import host_line

    intel = host_line(["avx512_bf16", "avx512f"], vendor="GenuineIntel")
    assert "no AMX" in intel and "resolves to 32-true" in intel
    assert "has AMX" in host_line(["amx_bf16"], vendor="GenuineIntel")
    amd = host_line(["avx512_bf16", "avx512f"], vendor="AuthenticAMD")
    assert "AuthenticAMD" in amd and "resolves to bf16-true" in amd


def test_spearman_ranks_ties_by_hand():
    """Ranks of [3, 1, 3, 2] are [3.5, 1, 3.5, 2]; [1, 2, 3, 4] against [1, 3, 2, 4] has sum d^2 = 2, so
    rho = 1 - 6 * 2 / (4 * 15) = 0.8; a constant side has no rank correlation (nan)."""
    import importlib.util
    import math
    from pathlib import Path

    import numpy as np

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_neutrality.py"
    spec = importlib.util.spec_from_file_location("bf16_neutrality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert mod.spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)
    assert math.isnan(mod.spearman(np.array([1.0, 2, 3]), np.array([5.0, 5, 5])))
    c = mod.compare(np.array([-1.0, -2.0, -np.inf, -4.0]), np.array([-1.5, -2.0, -3.0, -3.0]))
    assert (c["n"], c["finite_at_one_precision_only"], c["max_abs_delta"]) == (3, 1, 1.0)
    assert c["spearman_rho"] == pytest.approx(1.0) and c["fp32_range"] == [-4.0, -1.0]


@pytest.mark.parametrize("adapters", [True, False])
@pytest.mark.parametrize("vocab", ["few", "most"])
def test_lean_decoder_equals_hf_decode(lora_lm, adapters, vocab):
    """The sampler's Llama decode (preallocated cache, grouped attention, allowed-rows output layer, or the whole
    layer when most tokens are allowed) gives the HF forward's log-probs, with left-padded prompts, rows that
    finished (fed padding, attention 0) and adapters on or off. Tolerance 1e-4: the merged LoRA weight W + B A
    rounds differently from W x + B (A x), and the sampler's log-probs are only used to draw tokens (training
    recomputes them teacher-forced)."""
    from contextlib import nullcontext

    from gfnbench.sampling import masked_log_softmax
    from gfnbench.sampling.decoders import _HFDecoder, _LlamaDecoder

    lm, policy = lora_lm
    if not _LlamaDecoder.supports(policy):
        pytest.skip("the lean decoder covers Llama-family models only")
    tok = lm.tokenizer
    allowed = digit_mask(tok)
    if vocab == "most":
        allowed = most_tokens(allowed)
    ids, mask = left_pad([tok(p, add_special_tokens=False)["input_ids"] for p in ["Question: 1 + 2 = ? Answer:",
                                                                                   "the cat"]], tok.pad_token_id)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad(), (adapters_off(policy) if not adapters else nullcontext()):
        lean, hf = _LlamaDecoder(policy, allowed), _HFDecoder(policy)
        assert (lean.vocab is None) == (vocab == "most")

        def lean_logp(logits):      # columns: the allowed tokens, or the whole vocabulary (masked here)
            return torch.log_softmax(logits, -1) if lean.vocab is not None else \
                masked_log_softmax(logits, allowed)[:, allowed]

        a = lean_logp(lean.prefill(ids, mask, 3, 8))
        b = masked_log_softmax(hf.prefill(ids, mask, 3, 8), allowed)[:, allowed]
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        attn = mask.repeat_interleave(3, 0)
        pos = attn.sum(-1)
        alive = torch.ones(6, dtype=torch.long)
        cand = allowed.nonzero().squeeze(-1)
        for step in range(6):
            if step == 2:
                alive[1] = 0
            if step == 4:
                alive[4] = 0
            feed = cand[torch.randint(len(cand), (6,), generator=g)]
            feed = torch.where(alive.bool(), feed, torch.full_like(feed, tok.pad_token_id))
            attn = torch.cat([attn, alive[:, None]], 1)
            a = lean_logp(lean.step(feed, attn, pos))
            b = masked_log_softmax(hf.step(feed, attn, pos), allowed)[:, allowed]
            live = alive.bool()
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a[live], b[live], atol=1e-4, rtol=1e-4)
            pos = pos + 1


def test_state_token_log_probs_equal_the_full_batch_pass(lora_lm):
    lm, policy = lora_lm
    _, batches = _batches(lm, policy)
    with torch.no_grad(), adapters_off(policy) as base:
        for name, traj in batches.items():
            torch.testing.assert_close(state_token_log_probs(base, traj), reference_state_token_log_probs(base, traj),
                                       **TOL, msg=name)


def reference_sample(model, tok, prompts: list[str], n: int, cfg: SamplingConfig, stop_id: int, allowed: Tensor,
                     tool, generator: torch.Generator) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    """The sampler without any of its machinery: row by row, every step re-runs the row's whole prompt + state
    through the HF forward (no cache, no shared rows), masks the full vocabulary and draws with the row's own
    uniform of the step (one per row of the batch each step, as `sample` draws them)."""
    B = len(prompts) * n
    states, log_pf = [[] for _ in range(B)], [[] for _ in range(B)]
    pending, n_actions = [[] for _ in range(B)], [0] * B
    done, stopped = [False] * B, [False] * B
    while not all(done):
        u = torch.rand(B, 1, dtype=torch.float64, generator=generator)
        for b in range(B):
            if done[b]:
                continue
            if pending[b]:
                states[b].append(pending[b].pop(0))
                continue
            if n_actions[b] >= cfg.max_len:
                done[b] = True
                continue
            ids = tok(prompts[b // n], add_special_tokens=False)["input_ids"] + states[b]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            logp = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1)
            weights = ((logp - logp.max()) / cfg.temperature).exp()
            if n_actions[b] < cfg.min_len:
                weights[stop_id] = 0.0
            tok_id = int(inverse_cdf(weights[None], u[b: b + 1])[0])
            if tok_id == stop_id:
                done[b] = stopped[b] = True
                continue
            states[b].append(tok_id)
            log_pf[b].append(float(logp[tok_id]))
            n_actions[b] += 1
            inserted = tool(tok.decode(states[b], skip_special_tokens=True))
            if inserted:
                pending[b] = tok(inserted, add_special_tokens=False)["input_ids"][: cfg.max_tool_tokens]
    return states, log_pf, stopped


@pytest.mark.parametrize("fast", [None, False])
@pytest.mark.parametrize("drop_at", [0.0, 0.75, 1.0])
def test_sampler_draws_what_plain_per_row_decoding_draws(lora_lm, monkeypatch, fast, drop_at):
    """`sample` holds one decoder row per distinct history (rows that wrote the same tokens share it; a node
    splits when they draw apart) and stops computing finished rows (`DROP_FINISHED_AT`: never, at 3/4,
    at every finish). None of it changes a sample: the same tokens, stops and log-probs as the cache-free
    per-row `reference_sample`, with tools, left-padded prompts of different lengths and both decoders
    (`fast=False`: the HF forward and its cache; gpt2 has only that one). The temperature is low enough that
    rows share histories, and high enough that they split."""
    import gfnbench.sampling.sampler as sampler

    monkeypatch.setattr(sampler, "DROP_FINISHED_AT", drop_at)
    lm, policy = lora_lm
    tok = lm.tokenizer
    allowed = digit_mask(tok)
    cfg = SamplingConfig(temperature=0.7, min_len=1, max_len=9)
    prompts = ["Question: 1 + 2 = ? Answer:", "the cat"]
    got = sample(policy, tok, prompts, 6, cfg, stop_id=lm.eos_id, allowed=allowed, tool=_tool,
                 generator=torch.Generator().manual_seed(4), fast=fast)
    states, log_pf, stopped = reference_sample(policy, tok, prompts, 6, cfg, lm.eos_id, allowed, _tool,
                                               torch.Generator().manual_seed(4))
    assert [got.state_ids[b, : int(got.state_mask[b].sum())].tolist() for b in range(len(got))] == states
    assert got.stopped.tolist() == stopped
    for b in range(len(got)):
        torch.testing.assert_close(got.log_pf[b, : len(log_pf[b])], torch.tensor(log_pf[b]), atol=1e-4, rtol=1e-4)
    shared_then_split = [(a, b) for a in range(12) for b in range(a + 1, 12) if a // 6 == b // 6
                         and len(states[a]) > 1 and states[a][:2] == states[b][:2] and states[a] != states[b]]
    assert shared_then_split, "test data too weak: no two rows of a prompt shared a history, then split"
    assert len({len(s) for s in states}) > 2, "test data too weak: rows ran equally long"


def test_sequence_log_likelihoods_equal_the_full_batch_pass(lora_lm, monkeypatch):
    """Evaluation's likelihood scores each distinct (prompt, state) once, in length-sorted passes (3 rows a pass
    here, so the passes split a prompt's rows): equal to the one padded full-batch pass, with repeated rows,
    an empty state, two prompts of different lengths and tool tokens in the states."""
    import gfnbench.sampling.scoring as scoring
    from gfnbench.sampling import sequence_log_likelihoods

    monkeypatch.setattr(scoring, "ROWS_PER_PASS", 3)
    lm, policy = lora_lm
    _, batches = _batches(lm, policy)
    two = batches["two_prompts"]
    index = [0, 1, 1, 2, 3, 0, 4, 5, 5, 3]            # repeated rows, both prompts
    traj = two.select(index)
    prompts = [traj.prompt_ids[b][traj.prompt_mask[b].bool()].tolist() for b in range(len(traj))]
    states = [traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist() for b in range(len(traj))]
    states[6] = []
    with torch.no_grad(), adapters_off(policy) as base:
        got = sequence_log_likelihoods(base, prompts, states, lm.tokenizer.pad_token_id)
        want = reference_state_token_log_probs(base, traj).sum(-1)
    want[6] = 0.0
    assert len({tuple(s) for s in states}) < len(states) and len({len(s) for s in states}) > 2
    torch.testing.assert_close(got, want, **TOL)


def test_length_passes_are_the_cheapest_split_by_brute_force():
    """The split of length-sorted rows into passes is the cheapest of every split (enumerated), under the row cap."""
    from itertools import combinations

    from gfnbench.sampling import length_passes

    def cost(lengths, passes, pass_cost):
        return sum((e - s) * lengths[e - 1] + pass_cost for s, e in passes)

    for lengths, max_rows, pass_cost in [([1, 2, 2, 3, 9, 10, 30], 3, 4), ([5] * 6, 4, 10), ([1, 50], 8, 1),
                                         ([2, 3, 4, 20, 21, 40, 41, 42], 8, 6)]:
        n = len(lengths)
        best = None
        for k in range(n):
            for cuts in combinations(range(1, n), k):
                bounds = [0, *cuts, n]
                passes = list(zip(bounds, bounds[1:]))
                if all(e - s <= max_rows for s, e in passes):
                    c = cost(lengths, passes, pass_cost)
                    best = c if best is None else min(best, c)
        got = length_passes(lengths, max_rows, pass_cost)
        assert got[0][0] == 0 and got[-1][1] == n and all(a[1] == b[0] for a, b in zip(got, got[1:]))
        assert all(e - s <= max_rows for s, e in got)
        assert cost(lengths, got, pass_cost) == best
