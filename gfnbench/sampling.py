"""Batched, KV-cached sampling with tools, and the teacher-forced passes that score what was sampled.

The sampler keeps every row in lock-step: each step feeds exactly one token per row, either a token the policy
samples (an action) or the next token a tool asked to insert (not an action). So a calculator can write into
one row's state while the others keep sampling, with one shared KV cache and no cache resets.

Log-probabilities are always those of the policy's own distribution: log-softmax of the logits with the task's
allowed-token mask applied. Temperature, top-p and the min-length block only shape *which* token is drawn, so
`log_pf`/`log_pterm` recomputed by `policy_log_probs` equal the sampling-time values.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gfnbench.trajectories import Trajectories, from_rows, left_pad

Tool = Callable[[str], "str | None"]


class PromptTooLong(ValueError):
    """A prompt plus the longest continuation does not fit the model's context."""


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    min_len: int = 0          # actions before the stop action is allowed
    max_len: int = 20         # actions; the stop is forced after this many
    max_tool_tokens: int = 8  # per tool call, counted into the context check

    def __post_init__(self):
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.max_len < 1 or self.min_len < 0 or self.min_len > self.max_len:
            raise ValueError(f"need 0 <= min_len <= max_len and max_len >= 1, got {self.min_len}, {self.max_len}")


def masked_log_softmax(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """The policy's distribution: disallowed tokens get probability exactly 0."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def positions_from_mask(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def check_context(prompt_ids: list[list[int]], budget: int, context: int, texts: list[str]) -> None:
    for ids, text in zip(prompt_ids, texts):
        if len(ids) + budget > context:
            raise PromptTooLong(
                f"prompt of {len(ids)} tokens + up to {budget} generated tokens exceeds the model's context of "
                f"{context}: shorten the prompt (fewer shots) or lower max_len. Prompt starts: {text[:60]!r}")


def _choose_tokens(logp: Tensor, cfg: SamplingConfig, block_stop: Tensor, stop_id: int,
                   generator: torch.Generator | None) -> Tensor:
    """Draw one token per row from the tempered, nucleus-truncated policy (stop blocked where asked)."""
    scores = logp.clone()
    scores[block_stop, stop_id] = float("-inf")
    if cfg.greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores / cfg.temperature, dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < cfg.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def prefill(model, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int):
    """Run each distinct prompt once, then copy its cache to its `repeats` rows (saves (n-1)/n of prefill)."""
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions_from_mask(prompt_mask),
                use_cache=True)
    cache = out.past_key_values
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    return out.logits[:, -1].float().repeat_interleave(repeats, 0), cache


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], n: int, cfg: SamplingConfig, *, stop_id: int,
           allowed: Tensor | None = None, tool: Tool | None = None, context: int | None = None,
           generator: torch.Generator | None = None) -> Trajectories:
    """Sample n continuations of every prompt. Rows are prompt-major: row = prompt_index * n + k."""
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n}")
    if not prompts:
        raise ValueError("no prompts to sample from")
    pad_id = tokenizer.pad_token_id
    ids = encode(tokenizer, prompts)
    budget = cfg.max_len * (1 + (cfg.max_tool_tokens if tool else 0))
    check_context(ids, budget, context or 10**9, prompts)
    prompt_ids, prompt_mask = left_pad(ids, pad_id)
    logits, cache = prefill(model, prompt_ids, prompt_mask, n)
    B = len(prompts) * n
    attn = prompt_mask.repeat_interleave(n, 0)
    next_pos = attn.sum(-1)

    states = [[] for _ in range(B)]
    acts = [[] for _ in range(B)]
    log_pf = [[] for _ in range(B)]
    log_pterm = [[] for _ in range(B)]
    pending = [[] for _ in range(B)]
    stopped = [False] * B
    done = [False] * B
    n_actions = torch.zeros(B, dtype=torch.long)

    while not all(done):
        logp = masked_log_softmax(logits, allowed)
        deciding = torch.tensor([not done[b] and not pending[b] for b in range(B)])
        forced = deciding & (n_actions >= cfg.max_len)
        chosen = _choose_tokens(logp, cfg, n_actions < cfg.min_len, stop_id, generator)
        feed = torch.full((B,), pad_id, dtype=torch.long)
        for b in range(B):
            if done[b]:
                continue
            if pending[b]:
                tok = pending[b].pop(0)
                states[b].append(tok)
                acts[b].append(False)
                feed[b] = tok
                continue
            log_pterm[b].append(0.0 if forced[b] else float(logp[b, stop_id]))
            tok = int(chosen[b])
            if forced[b] or tok == stop_id:
                done[b], stopped[b] = True, not bool(forced[b])
                continue
            log_pf[b].append(float(logp[b, tok]))
            states[b].append(tok)
            acts[b].append(True)
            n_actions[b] += 1
            feed[b] = tok
            if tool is not None:
                inserted = tool(tokenizer.decode(states[b], skip_special_tokens=True))
                if inserted:
                    pending[b] = tokenizer(inserted, add_special_tokens=False)["input_ids"][: cfg.max_tool_tokens]
        if all(done):
            break
        alive = torch.tensor([not d for d in done], dtype=torch.long)
        attn = torch.cat([attn, alive[:, None]], dim=1)
        out = model(input_ids=feed[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        next_pos = next_pos + 1

    texts = [tokenizer.decode(s, skip_special_tokens=True) for s in states]
    rows = [p for p in prompts for _ in range(n)]
    groups = [i for i in range(len(prompts)) for _ in range(n)]
    return from_rows(rows, groups, [ids[g] for g in groups], states, acts, stopped, log_pf, log_pterm, texts,
                     pad_id)


def _forward_tail(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, keep: int) -> Tensor:
    """Logits of the last `keep` positions only: the prompt's logits would cost B*P*V floats for nothing."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=keep)
    return out.logits[:, -keep:].float()


def policy_log_probs(model, traj: Trajectories, allowed: Tensor | None, stop_id: int) -> tuple[Tensor, Tensor]:
    """Teacher-forced (log_pf [B, L], log_pterm [B, L+1]) of a batch of trajectories, with gradients.

    The state includes tool outputs, so a replayed tool trajectory is scored in the context it was sampled in.
    """
    P, S = traj.prompt_ids.shape[1], traj.state_ids.shape[1]
    input_ids = torch.cat([traj.prompt_ids, traj.state_ids], dim=1)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    logp = masked_log_softmax(_forward_tail(model, input_ids, mask, positions_from_mask(mask), S + 1), allowed)
    # logp[:, k] is the distribution after k state tokens (k = 0: after the prompt only).
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


def state_token_log_probs(model, traj: Trajectories) -> Tensor:
    """[B, S] log p(state token | prompt, earlier state tokens) under `model`, unmasked (for likelihood metrics)."""
    S = traj.state_ids.shape[1]
    if S == 0:
        return torch.zeros(len(traj), 0)
    input_ids = torch.cat([traj.prompt_ids, traj.state_ids], dim=1)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    logits = _forward_tail(model, input_ids, mask, positions_from_mask(mask), S + 1)
    logp = torch.log_softmax(logits[:, :S], dim=-1)
    return logp.gather(-1, traj.state_ids[:, :, None]).squeeze(-1) * traj.state_mask


def prefix_reward_mask(ctx_mask: Tensor, state_mask: Tensor, ends: Tensor, block_len: Tensor, M: int) -> Tensor:
    """[B, T, T] bool attention for [context | state | suffix copy 0 | ... | suffix copy L].

    Copy j of the suffix sees the context, the first ends[j] state tokens and itself (causally): one forward
    pass scores "suffix after every prefix" for all prefixes at once.
    """
    B, C = ctx_mask.shape
    S = state_mask.shape[1]
    J = ends.shape[1]
    T = C + S + J * M
    idx = torch.arange(T)
    is_ctx, is_state = idx < C, (idx >= C) & (idx < C + S)
    block = torch.where(idx >= C + S, (idx - C - S) // M, -1)          # which copy a position belongs to
    offset = torch.where(idx >= C + S, (idx - C - S) % M, -1)
    key_valid = torch.cat([ctx_mask.bool(), state_mask.bool(),
                           (torch.arange(M)[None, None, :] < block_len[:, None, None]).expand(B, J, M).reshape(B, -1)],
                          dim=1)                                        # [B, T]
    q, k = idx[:, None], idx[None, :]
    prefix_part = (~(block[:, None] >= 0)) & (k <= q) & (block[None, :] < 0)   # [T, T] ordinary causal
    # suffix copy j: context keys, state keys with index < ends[j], same-copy keys with offset <= own offset
    state_index = (idx - C).clamp(min=0)
    qb = block.clamp(min=0)
    sees_state = is_state[None, None, :] & (state_index[None, None, :] < ends[:, qb][:, :, None])  # [B, T, T]
    same_copy = (block[:, None] == block[None, :]) & (offset[None, :] <= offset[:, None]) & (block[:, None] >= 0)
    suffix_part = (block[None, :, None] >= 0) & (is_ctx[None, None, :] | sees_state | same_copy[None])
    return (prefix_part[None] | suffix_part) & key_valid[:, None, :]


def _context_then_rest_logits(model, ctx_ids: Tensor, ctx_mask: Tensor, rest_ids: Tensor, bias: Tensor,
                              pos: Tensor) -> Tensor:
    """Logits from the last context position on. When every row shares the context (a GFlowNet batch: one
    prompt x n samples; arithmetic's 3-shot context is ~170 tokens) it is run once and its cache copied."""
    C = ctx_ids.shape[1]
    B = ctx_ids.shape[0]
    keep = rest_ids.shape[1] + 1
    shared = B > 1 and bool((ctx_ids == ctx_ids[:1]).all()) and bool((ctx_mask == ctx_mask[:1]).all())
    if not shared:
        return _forward_tail(model, torch.cat([ctx_ids, rest_ids], dim=1), bias, pos, keep)
    out = model(input_ids=ctx_ids[:1], attention_mask=ctx_mask[:1], position_ids=pos[:1, :C], use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(B)
    rest = model(input_ids=rest_ids, attention_mask=bias[:, :, C:, :], position_ids=pos[:, C:],
                 past_key_values=cache, use_cache=True).logits.float()
    return torch.cat([out.logits[:, -1:].float().expand(B, 1, -1), rest], dim=1)


def every_prefix_log_reward(model, ctx_ids: Tensor, ctx_mask: Tensor, traj: Trajectories,
                            suffix_ids: list[list[int]]) -> Tensor:
    """[B, L+1] log p(s_j, suffix | context) for every prefix state s_j, in one teacher-forced pass.

    This is the CoT/infill reward of the paper: the rationale so far (tool outputs included) followed by the
    fixed answer string, under the reward model. Entries past a row's length are 0 (masked by lengths).
    """
    B, C = ctx_ids.shape
    S = traj.state_ids.shape[1]
    ends = traj.state_ends()
    J = ends.shape[1]
    block_len = torch.tensor([len(s) for s in suffix_ids])
    M = max(int(block_len.max()), 1)
    suffix = torch.zeros(B, M, dtype=torch.long)
    for b, s in enumerate(suffix_ids):
        suffix[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    allowed = prefix_reward_mask(ctx_mask, traj.state_mask, ends, block_len, M)
    ctx_len = ctx_mask.sum(-1)
    pos = torch.cat([positions_from_mask(ctx_mask),
                     ctx_len[:, None] + torch.arange(S)[None, :],
                     (ctx_len[:, None, None] + ends[:, :, None] + torch.arange(M)[None, None, :]).reshape(B, -1)],
                    dim=1)
    rest_ids = torch.cat([traj.state_ids, suffix.repeat(1, J)], dim=1)
    dtype = next(model.parameters()).dtype
    bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    logp = torch.log_softmax(_context_then_rest_logits(model, ctx_ids, ctx_mask, rest_ids, bias, pos), dim=-1)
    # logp[:, k] predicts the token at sequence position C + k (k = 0: first state token).
    state_lp = logp[:, :S].gather(-1, traj.state_ids[:, :, None]).squeeze(-1) * traj.state_mask
    cum = torch.cat([torch.zeros(B, 1), state_lp.cumsum(-1)], dim=1)       # [B, S+1] sum over first e tokens
    prefix_lp = cum.gather(1, ends)                                        # [B, J]
    # first suffix token of copy j is predicted from the last state token of s_j (index C + ends - 1)
    first = logp.gather(1, ends[:, :, None].expand(B, J, logp.shape[-1]))  # position C + ends - 1 -> k = ends
    first_lp = first.gather(-1, suffix[:, :1, None].expand(B, J, 1)).squeeze(-1)
    rest = logp[:, S + 1: S + 1 + J * M].reshape(B, J, M, -1)[:, :, : M - 1]   # copy j offset m predicts m+1
    rest_lp = rest.gather(-1, suffix[:, None, 1:, None].expand(B, J, M - 1, 1)).squeeze(-1)
    rest_valid = torch.arange(1, M)[None, None, :] < block_len[:, None, None]
    suffix_lp = first_lp + (rest_lp * rest_valid).sum(-1)
    total = prefix_lp + suffix_lp
    j = torch.arange(J)[None, :]
    return torch.where(j <= traj.lengths[:, None], total, torch.zeros_like(total))


def context_suffix_log_reward(model, tokenizer, traj: Trajectories, contexts: list[str],
                              suffix_ids: list[list[int]], min_len: int) -> Tensor:
    """[B, L+1] log p(s_j, suffix | context) per row, -inf for prefixes shorter than min_len (the sampler cannot
    stop there): the reward shape of arith, continuation and infill, built once."""
    ctx = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    ctx_ids, ctx_mask = left_pad(ctx, tokenizer.pad_token_id)
    log_r = every_prefix_log_reward(model, ctx_ids, ctx_mask, traj, suffix_ids)
    too_short = torch.arange(log_r.shape[1])[None, :] < min_len
    return log_r.masked_fill(too_short, float("-inf"))


def continuation_log_probs(model, pairs: list[tuple[list[int], list[int]]]) -> list[Tensor]:
    """Per-token log p(continuation | prefix) of each (prefix ids, continuation ids) pair, one batched pass.

    Left padding puts every continuation at the end, so only the last K positions' logits are materialised
    (a 50-shot prompt is ~2,000 tokens; its full logits would be ~0.4 GB per row at SmolLM2's vocabulary).
    """
    ids, mask = left_pad([p + c for p, c in pairs], 0)
    keep = max(len(c) for _, c in pairs) + 1
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                   logits_to_keep=keep).logits[:, -keep:].float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for b, (_, c) in enumerate(pairs):
        rows = logp[b, keep - 1 - len(c): keep - 1]          # the position before each continuation token
        out.append(rows.gather(-1, torch.tensor(c)[:, None]).squeeze(-1))
    return out
