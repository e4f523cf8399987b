"""Rewards of the CoT/infill shape: log p(prefix, suffix | context) for every prefix of every sampled row, the
suffix's later tokens in one extra pass over copies of the suffix against the state pass's KV cache."""
from __future__ import annotations

import torch
from torch import Tensor

from gfnbench.sampling.head import head_log_probs
from gfnbench.sampling.model_parts import runner
from gfnbench.sampling.scoring import context_state_positions, tail_pass
from gfnbench.trajectories import Trajectories, left_pad

COPIES_PER_ROW = 8    # suffix copies per row of the copies pass (`_suffix_copies_log_probs`)


def every_prefix_log_reward(model, ctx_ids: Tensor, ctx_mask: Tensor, traj: Trajectories,
                            suffix_ids: list[list[int]], min_len: int = 0) -> Tensor:
    """[B, L+1] log p(s_j, suffix | context) for every prefix state s_j with min_len <= j <= the row's length;
    -inf for the prefixes shorter than min_len (the sampler cannot stop there), 0 past a row's length.

    This is the CoT/infill reward of the paper: the rationale so far (tool outputs included) followed by the
    fixed answer string, under the reward model. One causal pass over [context | state] gives every prefix's
    state log-prob and the suffix's first token (read at the position that ends the prefix): a single-token
    suffix (continuation's ".") needs nothing more. A longer one runs the rest of the suffix once per scored
    prefix against that pass's KV cache (`_suffix_copies_log_probs`).
    """
    B, S = len(traj), traj.state_ids.shape[1]
    dev = traj.device
    suffix, block_len = _suffix_block(suffix_ids, dev)
    ends = traj.state_ends()                                               # [B, J]
    j = torch.arange(ends.shape[1], device=dev)[None, :]
    scored = (j <= traj.lengths[:, None]) & (j >= min_len)
    pos = context_state_positions(ctx_mask, S)
    attn = torch.cat([ctx_mask, traj.state_mask], dim=1)
    needs_copy = scored & (block_len[:, None] > 1)         # a one-token suffix is scored by the state pass alone
    hidden, parts, cache = tail_pass(model, ctx_ids, ctx_mask, traj.state_ids, attn, pos,
                                      keep_cache=bool(needs_copy.any()))
    # position k <= S predicts state token k + 1 and, after a prefix of k state tokens, the suffix's first token
    nxt = torch.cat([traj.state_ids, traj.state_ids.new_zeros(B, 1)], dim=1)
    targets = torch.stack([nxt, suffix[:, :1].expand(B, S + 1)], dim=-1)
    lp = head_log_probs(hidden, parts, targets)                           # [B, S+1, 2]
    state_lp = lp[:, :S, 0] * traj.state_mask
    cum = torch.cat([state_lp.new_zeros(B, 1), state_lp.cumsum(-1)], dim=1)   # [B, S+1] sum over first e tokens
    total = cum.gather(1, ends) + lp[..., 1].gather(1, ends)
    if cache is not None:
        total = total + _suffix_copies_log_probs(model, parts, cache, ctx_mask, ends, needs_copy, suffix, block_len)
    total = torch.where(scored, total, torch.zeros_like(total))
    return total.masked_fill(j < min_len, float("-inf"))


def _suffix_block(suffix_ids: list[list[int]], dev: torch.device) -> tuple[Tensor, Tensor]:
    """([B, M] right-padded suffix tokens, [B] their lengths)."""
    block_len = torch.tensor([len(s) for s in suffix_ids], device=dev)
    suffix = torch.zeros(len(suffix_ids), max(int(block_len.max()), 1), dtype=torch.long, device="cpu")
    for b, s in enumerate(suffix_ids):
        suffix[b, : len(s)] = torch.tensor(s, dtype=torch.long, device="cpu")
    return suffix.to(dev), block_len


def _suffix_copies_log_probs(model, parts, cache, ctx_mask: Tensor, ends: Tensor, scored: Tensor, suffix: Tensor,
                             block_len: Tensor) -> Tensor:
    """[B, J] sum of log p(suffix token m | context, prefix j, suffix tokens < m) over m >= 1, for the scored
    (b, j); 0 elsewhere.

    Each scored prefix gets its own copy of suffix tokens 0..M-2 (the last token is only a target), and a row's
    copies go COPIES_PER_ROW to a row of one pass over `cache`, the [context | state] keys of the pass that scored
    the prefixes, copied to each such row. A copy sees the context, its prefix's state tokens and itself
    (causally). Only the scored prefixes get a copy: with one copy for every j up to the batch's longest row,
    an arith training batch of mixed lengths ran 2-4x the copies it used."""
    B, J = scored.shape
    M1 = suffix.shape[1] - 1
    dev = scored.device
    pair_b, pair_j = scored.nonzero(as_tuple=True)                         # row-major: by row, then prefix
    counts = scored.sum(1)
    rank = torch.arange(len(pair_b), device=dev) - (counts.cumsum(0) - counts)[pair_b]
    per_row = (counts + COPIES_PER_ROW - 1) // COPIES_PER_ROW
    pair_r = (per_row.cumsum(0) - per_row)[pair_b] + rank // COPIES_PER_ROW     # the copies-pass row of each pair
    pair_g = rank % COPIES_PER_ROW                                               # its slot in that row
    src = torch.repeat_interleave(torch.arange(B, device=dev), per_row)         # [R] the row each copies-row serves
    R, G, Q = len(src), COPIES_PER_ROW, COPIES_PER_ROW * M1
    slot_j = torch.zeros(R, G, dtype=torch.long, device=dev)
    slot_j[pair_r, pair_g] = pair_j
    used = torch.zeros(R, G, dtype=torch.bool, device=dev)
    used[pair_r, pair_g] = True
    m = torch.arange(M1, device=dev)
    valid = used[:, :, None] & (m[None, None, :] < block_len[src][:, None, None] - 1)        # [R, G, M1]
    prefix_len = ends[src].gather(1, slot_j)                                                 # [R, G]
    pos = ctx_mask.sum(-1)[src][:, None, None] + prefix_len[:, :, None] + m[None, None, :]
    ids = suffix[src][:, None, :M1].expand(R, G, M1)
    dtype = model.get_input_embeddings().weight.dtype           # the attention scores' (bf16 under bf16-true)
    bias = _copies_bias(ctx_mask[src], prefix_len, valid, cache.get_seq_length(), dtype)
    cache.reorder_cache(src)
    run, field = runner(model, parts)
    h = getattr(run(input_ids=ids.reshape(R, Q), attention_mask=bias, position_ids=pos.reshape(R, Q),
                    past_key_values=cache, use_cache=True), field)
    targets = suffix[src][:, None, 1:].expand(R, G, M1).reshape(R, Q, 1)
    lp = head_log_probs(h, parts, targets).reshape(R, G, M1)
    per_copy = (lp * valid).sum(-1)                                                          # [R, G]
    out = torch.zeros(B, J, dtype=per_copy.dtype, device=dev)
    out[pair_b, pair_j] = per_copy[pair_r, pair_g]
    return out


def _copies_bias(ctx_mask: Tensor, prefix_len: Tensor, valid: Tensor, cached: int, dtype: torch.dtype) -> Tensor:
    """[R, 1, Q, cached + Q] additive bias (0 / dtype min) of the copies pass: query (g, m) sees the row's context
    tokens, its prefix's first prefix_len[g] state tokens, and tokens m' <= m of its own copy; a padding query
    sees itself only (no empty softmax)."""
    R, G, M1 = valid.shape
    C, Q = ctx_mask.shape[1], G * M1
    S = cached - C
    q_slot = torch.arange(Q, device=valid.device) // M1
    q_m = torch.arange(Q, device=valid.device) % M1
    sees_ctx = ctx_mask.bool()[:, None, :].expand(R, Q, C)
    sees_state = torch.arange(S, device=valid.device)[None, None, :] < prefix_len[:, q_slot][:, :, None]
    own = (q_slot[:, None] == q_slot[None, :]) & (q_m[None, :] <= q_m[:, None])
    sees_copy = (own[None] & valid.reshape(R, 1, Q)) | torch.eye(Q, dtype=torch.bool, device=valid.device)[None]
    allowed = torch.cat([sees_ctx, sees_state, sees_copy], dim=2)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def context_suffix_log_reward(model, tokenizer, traj: Trajectories, contexts: list[str],
                              suffix_ids: list[list[int]], min_len: int) -> Tensor:
    """[B, L+1] log p(s_j, suffix | context) per row, -inf for prefixes shorter than min_len (the sampler cannot
    stop there): the reward shape of arith, continuation and infill, built once."""
    ctx = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in contexts]
    ctx_ids, ctx_mask = left_pad(ctx, tokenizer.pad_token_id, traj.device)
    return every_prefix_log_reward(model, ctx_ids, ctx_mask, traj, suffix_ids, min_len)
