"""Teacher-forced passes that score what was sampled (with gradients where enabled).

Log-probabilities are always those of the policy's own distribution: log-softmax of the logits with the task's
allowed-token mask applied. Temperature, top-p and the min-length block only shape *which* token is drawn, so
`log_pf`/`log_pterm` recomputed by `policy_log_probs` equal the sampling-time values.

Grouped-query models run transformers' SDPA attention as it chooses (its `repeat_kv` copies on the CPU): the one
switch that avoids them, TRANSFORMERS_SDPA_FORCE_GQA, is a process-wide environment variable, and transformers
has no per-call equivalent. Numbers are bit-identical either way; the copies cost SmolLM2's 16 x 20 training
pass ~85 MB of peak memory on the CPU and no measurable time.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gfnbench.devices import model_device
from gfnbench.sampling.head import head_log_probs
from gfnbench.sampling.model_parts import body_and_head, runner
from gfnbench.sampling.tokens import masked_log_softmax, positions_from_mask
from gfnbench.trajectories import Trajectories, left_pad, make_trajectories


def context_state_positions(ctx_mask: Tensor, S: int) -> Tensor:
    """Position ids of [left-padded context | S right-padded state tokens]: the state continues each row's context."""
    return torch.cat([positions_from_mask(ctx_mask),
                      ctx_mask.sum(-1, keepdim=True) + torch.arange(S, device=ctx_mask.device)[None, :]], dim=1)


def _distinct_rows(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """(first row of each distinct (context) sequence, each row's index into them), or None when no two rows
    share one: a GFlowNet batch is one prompt x n samples, an evaluation batch 10 questions x 10 samples."""
    if ids.shape[0] < 2:
        return None
    if bool((ids == ids[:1]).all()) and bool((mask == mask[:1]).all()):     # the common case, without a sort
        return ids.new_zeros(1), ids.new_zeros(ids.shape[0])
    _, inverse = torch.unique(torch.cat([ids, mask], dim=1), dim=0, return_inverse=True)
    n = int(inverse.max()) + 1
    if n == ids.shape[0]:
        return None
    first = torch.full((n,), ids.shape[0], dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(ids.shape[0], device=ids.device), reduce="amin")
    return first, inverse


def tail_hidden(model, ctx_ids: Tensor, ctx_mask: Tensor, rest_ids: Tensor, attn: Tensor, pos: Tensor):
    """Final hidden states (or logits, for a model without a plain head) of the last context position and every
    `rest` position, [B, 1 + R, H or V], and the model's (body, head) parts; gradients kept when enabled.

    `attn` is the 2D mask over [context | rest] or a 4D additive bias [B, 1, C+R, C+R]. Each distinct context
    runs once and its KV cache is copied to its rows: with gradients this is still exact, the cache copies'
    gradients sum back into the one context pass (forward and backward of each prompt run once)."""
    return tail_pass(model, ctx_ids, ctx_mask, rest_ids, attn, pos)[:2]


def tail_pass(model, ctx_ids: Tensor, ctx_mask: Tensor, rest_ids: Tensor, attn: Tensor, pos: Tensor,
              keep_cache: bool = False):
    """`tail_hidden`, plus the KV cache of [context | rest] per row when `keep_cache` (else None)."""
    parts = body_and_head(model)
    run, field = runner(model, parts)
    return _tail_hidden_pass(run, field, parts, ctx_ids, ctx_mask, rest_ids, attn, pos, keep_cache)


def _tail_hidden_pass(run, field: str, parts, ctx_ids: Tensor, ctx_mask: Tensor, rest_ids: Tensor, attn: Tensor,
                      pos: Tensor, keep_cache: bool):
    B, C = ctx_ids.shape
    shared = _distinct_rows(ctx_ids, ctx_mask) if C else None
    if shared is None:
        out = run(input_ids=torch.cat([ctx_ids, rest_ids], dim=1), attention_mask=attn, position_ids=pos,
                  use_cache=keep_cache, **({} if parts is not None else {"logits_to_keep": rest_ids.shape[1] + 1}))
        h = getattr(out, field)
        return h[:, -(rest_ids.shape[1] + 1):], parts, out.past_key_values if keep_cache else None
    first, inverse = shared
    contexts = run(input_ids=ctx_ids[first], attention_mask=ctx_mask[first], position_ids=pos[first, :C],
                   use_cache=True, **({} if parts is not None else {"logits_to_keep": 1}))
    cache = contexts.past_key_values
    cache.reorder_cache(inverse)
    rest_attn = attn if attn.dim() == 2 else attn[:, :, C:, :]
    rest = getattr(run(input_ids=rest_ids, attention_mask=rest_attn, position_ids=pos[:, C:], past_key_values=cache,
                       use_cache=True), field)
    hidden = torch.cat([getattr(contexts, field)[:, -1:].index_select(0, inverse), rest], dim=1)
    return hidden, parts, cache if keep_cache else None


def policy_log_probs(model, traj: Trajectories, allowed: Tensor | None, stop_id: int) -> tuple[Tensor, Tensor]:
    """Teacher-forced (log_pf [B, L], log_pterm [B, L+1]) of a batch of trajectories, with gradients.

    The state includes tool outputs, so a replayed tool trajectory is scored in the context it was sampled in.
    The shared prompt of a GFlowNet batch runs once (forward and backward; see `tail_hidden`), and the output
    layer is evaluated only at the S+1 state positions and the allowed tokens' rows. tests/test_perf_neutral.py
    checks it against the plain full-batch pass.
    """
    S = traj.state_ids.shape[1]
    B = len(traj)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    P = traj.prompt_ids.shape[1]
    pos = context_state_positions(traj.prompt_mask, S)
    if P == 0:
        pos = positions_from_mask(mask)
    hidden, parts = tail_hidden(model, traj.prompt_ids, traj.prompt_mask, traj.state_ids, mask, pos)
    vocab = None
    if allowed is not None:
        allowed = allowed.to(traj.device)
        vocab = allowed.nonzero().squeeze(-1)
        if not bool(allowed[stop_id]):
            vocab = None          # the stop must be a column; otherwise fall back to the full masked softmax
    # position k predicts state token k (k < S) and holds q(stop | first k state tokens) (k <= S)
    nxt = torch.cat([traj.state_ids, traj.state_ids.new_full((B, 1), stop_id)], dim=1)
    targets = torch.stack([nxt, torch.full_like(nxt, stop_id)], dim=-1)
    if vocab is None and allowed is not None:
        logits = hidden if parts is None else torch.nn.functional.linear(hidden, *parts[1])
        logp = masked_log_softmax(logits, allowed)
        lp = logp.gather(-1, targets)
    else:
        lp = head_log_probs(hidden, parts, targets, vocab)
    token_logp, stop_logp = lp[:, :S, 0], lp[..., 1]
    pos_a = traj.action_positions().clamp(max=max(S - 1, 0))
    log_pf = token_logp.gather(1, pos_a) if S else token_logp.new_zeros(B, traj.max_actions)
    log_pf = torch.where(traj.action_mask(), log_pf, torch.zeros_like(log_pf))
    log_pterm = stop_logp.gather(1, traj.state_ends())
    j = torch.arange(traj.max_actions + 1, device=traj.device)[None, :]
    forced_end = (j == traj.lengths[:, None]) & ~traj.stopped[:, None]
    log_pterm = torch.where(forced_end | (j > traj.lengths[:, None]), torch.zeros_like(log_pterm), log_pterm)
    return log_pf, log_pterm


def state_token_log_probs(model, traj: Trajectories) -> Tensor:
    """[B, S] log p(state token | prompt, earlier state tokens) under `model`, unmasked (for likelihood metrics).

    A prompt shared by every row runs once; the output layer is applied in chunks at the state positions only."""
    S = traj.state_ids.shape[1]
    if S == 0:
        return torch.zeros(len(traj), 0, device=traj.device)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    pos = context_state_positions(traj.prompt_mask, S)
    hidden, parts = tail_hidden(model, traj.prompt_ids, traj.prompt_mask, traj.state_ids, mask, pos)
    lp = head_log_probs(hidden[:, :S], parts, traj.state_ids[:, :, None])[..., 0]
    return lp * traj.state_mask


ROWS_PER_PASS = 64    # at most this many distinct sequences per teacher-forced pass in `sequence_log_likelihoods`
PASS_COST = 64        # what one more pass costs, in padded tokens (reading the weights once more)


def length_passes(lengths: list[int], max_rows: int, pass_cost: int) -> list[tuple[int, int]]:
    """Split rows sorted by length (ascending) into consecutive passes [start, end) that minimise the padded
    tokens (each pass pads to its last row) plus `pass_cost` per pass, at most `max_rows` rows a pass: an exact
    dynamic programme over the split points, O(n * max_rows)."""
    n = len(lengths)
    best, cut = [0] + [None] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + (end - start) * lengths[end - 1] + pass_cost
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    passes, end = [], n
    while end > 0:
        passes.append((cut[end], end))
        end = cut[end]
    return passes[::-1]


def sequence_log_likelihoods(model, prompt_ids: list[list[int]], states: list[list[int]], pad_id: int) -> Tensor:
    """[B] log p(state | prompt) under `model`, summed over the state tokens (0 for an empty state).

    Evaluation scores many repeated samples (at T = 0.1 most of a question's 10 draws are one string) of very
    different lengths, so each distinct (prompt, state) pair is scored once, the distinct pairs run in passes
    of similar lengths (`length_passes`), each padded only to its own longest, and each pass runs each of its
    distinct prompts once (`tail_hidden`). Equal to one full-batch `state_token_log_probs` to float rounding
    (tests/test_perf_neutral.py)."""
    keys = [(tuple(p), tuple(s)) for p, s in zip(prompt_ids, states)]
    distinct = [k for k in dict.fromkeys(keys) if k[1]]
    slot = {k: i for i, k in enumerate(distinct)}
    dev = model_device(model)
    scores = torch.zeros(len(distinct) + 1, device=dev)          # the last slot: empty states
    order = sorted(range(len(distinct)), key=lambda i: (len(distinct[i][1]), distinct[i][0]))
    for start, end in length_passes([len(distinct[i][1]) for i in order], ROWS_PER_PASS, PASS_COST):
        part = order[start: end]
        traj = make_trajectories(prompt_ids=[list(distinct[i][0]) for i in part],
                                 states=[list(distinct[i][1]) for i in part], pad_id=pad_id).to(dev)
        scores[torch.tensor(part, device=dev)] = state_token_log_probs(model, traj).sum(-1)
    return scores[torch.tensor([slot.get(k, len(distinct)) for k in keys], device=dev)]


def continuation_log_probs(model, pairs: list[tuple[list[int], list[int]]]) -> list[Tensor]:
    """Per-token log p(continuation | prefix) of each (prefix ids, continuation ids) pair, one batched pass.

    Left padding puts every continuation at the end, so only the last K positions' logits are materialised
    (a 50-shot prompt is ~2,000 tokens; its full logits would be ~0.4 GB per row at SmolLM2's vocabulary).
    """
    dev = model_device(model)
    ids, mask = left_pad([p + c for p, c in pairs], 0, dev)
    keep = max(len(c) for _, c in pairs) + 1
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                   logits_to_keep=keep).logits[:, -keep:].float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for b, (_, c) in enumerate(pairs):
        rows = logp[b, keep - 1 - len(c): keep - 1]          # the position before each continuation token
        out.append(rows.gather(-1, torch.tensor(c, device=dev)[:, None]).squeeze(-1))
    return out
