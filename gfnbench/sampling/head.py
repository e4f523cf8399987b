"""log p(targets) from hidden states through the output layer, without the [positions, vocabulary] logits at
once: a frozen layer runs in column blocks (a custom autograd function), a trained one in row chunks."""
from __future__ import annotations

import torch
from torch import Tensor

from gfnbench.sampling.tokens import few_allowed

HEAD_BLOCK = 2048     # output-layer columns per block in `head_log_probs`: [positions, 2048] fp32 logits at a time


def _block_logits(h: Tensor, weight: Tensor, bias: Tensor | None, col_bias: Tensor | None, c0: int,
                  c1: int) -> Tensor:
    """Columns c0:c1 of the logits, in at least fp32 (as the whole-layer form's `.float()`), blocked ones -inf."""
    logits = torch.nn.functional.linear(h, weight[c0:c1], None if bias is None else bias[c0:c1])
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits if col_bias is None else logits.add_(col_bias[c0:c1])


class _BlockedHeadLogProbs(torch.autograd.Function):
    """log softmax(h W^T + b)[targets], [N, m], over blocks of the output layer's columns: a running logsumexp
    in the forward, the logits recomputed block by block in the backward. The [positions, vocabulary] logits
    never exist at once: at SmolLM2's 49k tokens and a 16 x 21 batch the whole-layer form made and walked ~66 MB
    tensors (logits, mask, log-softmax, and their gradients) every step, and arith's suffix-copies reward 1.26 GB.
    Peak RSS of the continuation step went from 2.10 to 1.79 GB (results/perf.md). The recompute costs one more
    output-layer matmul in the backward. For a frozen output layer (LoRA does not train it): no gradient for W or
    b.
    `col_bias` ([V], 0 or -inf; or None) blocks columns; a blocked target reads -inf, as the masked softmax gives."""

    @staticmethod
    def forward(ctx, h, weight, bias, col_bias, targets, block):
        N, V = h.shape[0], weight.shape[0]
        acc = torch.promote_types(h.dtype, torch.float32)
        m_run = h.new_full((N, 1), float("-inf"), dtype=acc)
        s_run = h.new_zeros((N, 1), dtype=acc)
        picked = h.new_zeros(targets.shape, dtype=acc)
        for c0 in range(0, V, block):
            c1 = min(c0 + block, V)
            logits = _block_logits(h, weight, bias, col_bias, c0, c1)
            m_new = torch.maximum(m_run, logits.amax(-1, keepdim=True))
            safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            s_run = s_run * torch.exp(m_run - safe) + torch.exp(logits - safe).sum(-1, keepdim=True)
            m_run = m_new
            inside = (targets >= c0) & (targets < c1)
            got = logits.gather(-1, (targets - c0).clamp(0, c1 - c0 - 1))
            picked = torch.where(inside, got, picked)
        safe = torch.where(torch.isfinite(m_run), m_run, torch.zeros_like(m_run))
        lse = safe + torch.log(s_run)
        ctx.save_for_backward(h, lse, targets)
        ctx.weight, ctx.bias, ctx.col_bias, ctx.block = weight, bias, col_bias, block
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        h, lse, targets = ctx.saved_tensors
        weight, bias, col_bias, block = ctx.weight, ctx.bias, ctx.col_bias, ctx.block
        acc = grad.dtype
        total = grad.sum(-1, keepdim=True)
        if col_bias is not None:     # a blocked target's logit is a constant -inf: nothing flows through it
            grad = grad.masked_fill(col_bias[targets].isinf(), 0.0)
        # d/dh of sum_k g_k (logit[t_k] - lse) = sum_k g_k W[t_k] - (sum_k g_k) softmax @ W
        grad_h = torch.einsum("nm,nmh->nh", grad, weight[targets].to(acc))
        for c0 in range(0, weight.shape[0], block):
            c1 = min(c0 + block, weight.shape[0])
            p = torch.exp_(_block_logits(h, weight, bias, col_bias, c0, c1) - lse).mul_(total)
            # out of place: FlopCounterMode (results/perf.md's FLOP counts) does not count the in-place addmm_
            grad_h = torch.addmm(grad_h, p, weight[c0:c1].to(acc), alpha=-1.0)
        return grad_h.to(h.dtype), None, None, None, None, None


def head_log_probs(hidden: Tensor, parts, targets: Tensor, vocab: Tensor | None = None,
                    chunk: int = 256) -> Tensor:
    """log p(targets[..., m] | position) [B, K, m] from hidden states [B, K, H] (or logits when `parts` is None),
    normalised over `vocab` (the allowed tokens: disallowed targets get -inf, as the masked softmax gives) or the
    whole vocabulary. Only the output rows of `vocab` are computed when they are few (`few_allowed`); otherwise
    the whole layer runs with the other columns at -inf. A frozen output layer runs in column blocks
    (`_BlockedHeadLogProbs`); otherwise, without gradients, positions go in chunks, so the [positions, V] logits
    never exist at once."""
    B, K = hidden.shape[:2]
    flat_h = hidden.reshape(B * K, -1)
    flat_t = targets.reshape(B * K, -1)
    col_bias = weight = bias = None
    if parts is not None:
        weight, bias = parts[1]
        if vocab is not None and not few_allowed(len(vocab), weight.shape[0]):
            col_bias = torch.full((weight.shape[0],), float("-inf"), device=flat_h.device)
            col_bias[vocab] = 0.0
            vocab = None              # full-vocabulary columns from here on; a blocked target reads -inf
        elif vocab is not None:
            weight, bias = weight[vocab], None if bias is None else bias[vocab]
    if vocab is not None:
        n_col = max(int(vocab.max()), int(flat_t.max()) if flat_t.numel() else 0) + 1
        col = torch.full((n_col,), -1, dtype=torch.long, device=flat_t.device)
        col[vocab] = torch.arange(len(vocab), device=flat_t.device)
        t_col = col[flat_t]
    else:
        t_col = flat_t
    frozen = parts is not None and not (weight.requires_grad or (bias is not None and bias.requires_grad))
    if frozen and flat_h.shape[0]:
        lp = _BlockedHeadLogProbs.apply(flat_h, weight, bias, col_bias, t_col.clamp(min=0), HEAD_BLOCK)
    else:
        lp = _chunked_head_log_probs(flat_h, (weight, bias) if parts is not None else None, t_col, col_bias, vocab,
                                     chunk)
    if vocab is not None:
        lp = torch.where(t_col >= 0, lp, torch.full_like(lp, float("-inf")))
    return lp.reshape(B, K, -1)


def _chunked_head_log_probs(flat_h: Tensor, head: tuple | None, t_col: Tensor, col_bias: Tensor | None,
                            vocab: Tensor | None, chunk: int) -> Tensor:
    """The whole-row form, for an output layer that trains (`head` = its (weight, bias), already cut to `vocab`)
    or a model without a plain head (`head` None: `flat_h` are logits, cut to `vocab` here)."""
    step = flat_h.shape[0] if torch.is_grad_enabled() else chunk
    outs = []
    for i in range(0, flat_h.shape[0], max(step, 1)):
        h = flat_h[i:i + step]
        if head is not None:
            logits = torch.nn.functional.linear(h, *head).float()
        else:
            logits = h.float() if vocab is None else h.float()[:, vocab]
        if col_bias is not None:
            logits = logits + col_bias
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        outs.append(logits.gather(-1, t_col[i:i + step].clamp(min=0)) - lse)
    return torch.cat(outs) if outs else flat_h.new_zeros(0, t_col.shape[1])
