"""Batched, KV-cached sampling with tools, and the teacher-forced passes that score what was sampled.

The sampler keeps every row in lock-step: each step feeds exactly one token per row, either a token the policy
samples (an action) or the next token a tool asked to insert (not an action). So a calculator can write into
one row's state while the others keep sampling, with one shared KV cache and no cache resets. Rows that have
written the same tokens (at T = 0.1 most of a question's samples, for most of their length) share one decoder
row until their draws part, and finished rows stop being computed; each row still draws with its own uniform,
so neither changes a sample (tests/test_perf_neutral.py).

Log-probabilities are always those of the policy's own distribution: log-softmax of the logits with the task's
allowed-token mask applied. Temperature, top-p and the min-length block only shape *which* token is drawn, so
`log_pf`/`log_pterm` recomputed by `policy_log_probs` equal the sampling-time values.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from gfnbench.devices import model_device
from gfnbench.trajectories import Trajectories, from_rows, left_pad, make_trajectories

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


def few_allowed(n_allowed: int, vocab_size: int) -> bool:
    """Whether the output layer should run on the allowed tokens' rows only (a copy of those rows of the weight):
    worth it when they are few (arith: 140 of 49,152). When most tokens are allowed (continuation: 47,092) the
    whole layer runs and the disallowed columns are masked, sparing a 108 MB copy for 4% more FLOPs."""
    return 2 * n_allowed <= vocab_size


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


def _choose_tokens(logits: Tensor, cfg: SamplingConfig, block_stop: Tensor, stop_id: int,
                   generator: torch.Generator | None, rows: Tensor | None = None,
                   n_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """One token per row from the tempered, nucleus-truncated policy (stop blocked where asked), and each row's
    log-normaliser: log p(token) = logits[token] - lse. `logits` are [B, V] with disallowed columns at -inf.

    The normaliser and the draw share one exp pass (unnormalised weights, no log-softmax tensor): each sampler
    step walks its [16, 49k] logits ~10 times instead of ~20. `rows` are the batch rows (of `n_rows`) that
    `logits` hold when finished rows have been dropped: the draw still takes one uniform per row of the whole
    batch, so each row's stream does not depend on which others are still running."""
    m = logits.amax(-1, keepdim=True)
    shifted = logits - m
    weights = shifted.exp()
    lse = m + weights.sum(-1, keepdim=True).log()
    if cfg.greedy:
        scores = logits.clone()
        scores[block_stop, stop_id] = float("-inf")
        return scores.argmax(dim=-1), lse
    if cfg.temperature != 1.0:
        weights = shifted.div_(cfg.temperature).exp_()
    weights[block_stop, stop_id] = 0.0
    if cfg.top_p < 1.0:
        probs = weights / weights.sum(-1, keepdim=True)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = (sorted_p.cumsum(-1) - sorted_p) < cfg.top_p
        weights = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return draw_index(weights, generator, rows, n_rows), lse


def draw_index(probs: Tensor, generator: torch.Generator | None, rows: Tensor | None = None,
               n_rows: int | None = None) -> Tensor:
    """One column per row, with probability proportional to `probs` (unnormalised, >= 0), by the inverse CDF:
    one uniform per row. `torch.multinomial` draws one exponential per column instead: 11% of the sampler's time
    (17 ms a step at one thread) at SmolLM2's 47k allowed tokens x 16 rows."""
    u = torch.rand(n_rows or probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    return inverse_cdf(probs, u if rows is None else u[rows])


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The first column whose cumulative mass exceeds u [B, 1] (in [0, 1]) times the row's total, the CDF summed
    in float64. That column always has mass (the CDF rises there). u * total can round up to the total itself:
    the search then runs past the end, and the last column with mass is the answer (tests/test_sampling.py)."""
    cdf = probs.cumsum(-1, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    over = idx >= probs.shape[-1]
    if bool(over.any()):
        idx[over] = probs.shape[-1] - 1 - (probs[over].flip(-1) > 0).to(torch.uint8).argmax(-1)
    return idx


@torch.no_grad()
def prefill(model, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int):
    """Run each distinct prompt once, then copy its cache to its `repeats` rows (saves (n-1)/n of prefill)."""
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions_from_mask(prompt_mask),
                use_cache=True)
    cache = out.past_key_values
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    return out.logits[:, -1].float().repeat_interleave(repeats, 0), cache


class _HFDecoder:
    """One decode step = one HF forward with a DynamicCache (any architecture); logits over the full vocabulary."""

    def __init__(self, model):
        self.model = model
        self.cache = None
        self.vocab = None

    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int, budget: int,
                capacity: int = 0) -> Tensor:
        logits, self.cache = prefill(self.model, prompt_ids, prompt_mask, repeats)
        return logits

    def step(self, feed: Tensor, attn: Tensor, pos: Tensor) -> Tensor:
        out = self.model(input_ids=feed[:, None], attention_mask=attn, position_ids=pos[:, None],
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def keep(self, rows: Tensor) -> None:
        """Hold these rows of the ones held now, in this order (repeats copy a row: the sampler splits a node)."""
        self.cache.reorder_cache(rows)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _effective_linear(module) -> tuple[Tensor, Tensor | None] | None:
    """(weight, bias) that `module` applies right now: a plain Linear's own, or a peft LoRA Linear's base weight
    plus its active adapters' B A * scaling (nothing inside `adapters_off`). None when the layer does something
    else (a LoRA variant such as DoRA, dropout in training mode, a non-Linear base), so the caller runs it."""
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
        weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight, base.bias


class _LlamaDecoder:
    """The sampler's decode for Llama-family models, without the generic HF machinery: a preallocated KV cache
    written in place (no per-step concatenation), grouped-query attention as one batched matmul per layer over
    the cache prefix (no repeated or copied K/V), no per-step 4D mask construction, the LoRA of the attention
    projections merged into one fused q|k|v weight and one o weight per call (no adapter matmuls per token),
    and the output layer evaluated only on the allowed tokens' rows (when they are few). Norms, rotary embedding
    and MLP are the model's own modules. Equal to `_HFDecoder` to float rounding (tests/test_perf_neutral.py)."""

    SUPPORTED = {"llama"}

    @classmethod
    def supports(cls, model) -> bool:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        return (getattr(cfg, "model_type", None) in cls.SUPPORTED and getattr(cfg, "pretraining_tp", 1) == 1
                and not getattr(cfg, "final_logit_softcapping", None) and hasattr(base, "model")
                and hasattr(base.model, "rotary_emb") and _effective_linear(base.lm_head) is not None)

    def __init__(self, model, allowed: Tensor | None):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body, cfg = base.model, base.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scaling = self.body.layers[0].self_attn.scaling
        head_w, head_b = _effective_linear(base.lm_head)
        few = allowed is not None and few_allowed(int(allowed.sum()), allowed.numel())
        self.vocab = allowed.nonzero().squeeze(-1) if few else None      # else the sampler masks the whole layer
        self.head_w = head_w if self.vocab is None else head_w[self.vocab]
        self.head_b = None if head_b is None else (head_b if self.vocab is None else head_b[self.vocab])
        self.qkv, self.o = [], []
        for layer in self.body.layers:
            attn = layer.self_attn
            parts = [_effective_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
            if all(p is not None for p in parts):
                bias = None if all(p[1] is None for p in parts) else torch.cat(
                    [p[1] if p[1] is not None else p[0].new_zeros(p[0].shape[0]) for p in parts])
                self.qkv.append((torch.cat([p[0] for p in parts]), bias))
            else:
                self.qkv.append(None)
            self.o.append(_effective_linear(attn.o_proj))
        self.k = self.v = self.k_buf = self.v_buf = self.key_ok = None
        self.t = 0

    def _forward(self, ids: Tensor, pos: Tensor, key_ok: Tensor) -> Tensor:
        b, T = ids.shape
        t0, t1 = self.t, self.t + T
        self.key_ok[:, t0:t1] = key_ok
        dev = ids.device
        q_idx = t0 + torch.arange(T, device=dev)
        k_idx = torch.arange(t1, device=dev)
        visible = self.key_ok[:, None, :t1] & (k_idx[None, None, :] <= q_idx[None, :, None])
        visible = visible | (k_idx[None, None, :] == q_idx[None, :, None])   # a padding query sees itself: no NaN
        x = self.body.embed_tokens(ids)
        bias = torch.zeros(visible.shape, dtype=x.dtype, device=dev).masked_fill_(~visible, float("-inf"))
        bias = bias[:, None, None]
        cos, sin = self.body.rotary_emb(x, pos)
        cos, sin = cos[:, None], sin[:, None]
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        rep = nh // nkv
        for layer, kc, vc, qkv, o_w in zip(self.body.layers, self.k, self.v, self.qkv, self.o):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            if qkv is not None:
                q, k, v = torch.nn.functional.linear(h, *qkv).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            else:
                q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
            q = q.reshape(b, T, nh, hd).transpose(1, 2)
            k = k.reshape(b, T, nkv, hd).transpose(1, 2)
            kc[:, :, t0:t1] = k * cos + _rotate_half(k) * sin
            vc[:, :, t0:t1] = v.reshape(b, T, nkv, hd).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            # query head g * rep + r reads kv head g (HF's repeat_kv order): [b, kv, rep * T, hd] against the
            # cache prefix [b, kv, t1, hd], a strided view (no copy)
            qg = q.reshape(b, nkv, rep * T, hd)
            scores = torch.matmul(qg, kc[:, :, :t1].transpose(-1, -2)).view(b, nkv, rep, T, t1)
            probs = torch.softmax(scores * self.scaling + bias, dim=-1).view(b, nkv, rep * T, t1)
            o = torch.matmul(probs, vc[:, :, :t1]).view(b, nh, T, hd).transpose(1, 2).reshape(b, T, nh * hd)
            x = x + (torch.nn.functional.linear(o, *o_w) if o_w is not None else attn.o_proj(o))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.t = t1
        h = self.body.norm(x[:, -1])
        return torch.nn.functional.linear(h, self.head_w, self.head_b).float()

    def prefill(self, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int, budget: int,
                capacity: int = 0) -> Tensor:
        """Run the prompts; the cache has room for `budget` more tokens and max(capacity, prompts x repeats)
        rows (a node split adds rows)."""
        nP, P = prompt_ids.shape
        cap, rows = P + budget + 1, max(capacity, nP * repeats)
        dtype, dev = self.head_w.dtype, prompt_ids.device
        self.k_buf = [torch.empty(rows, self.n_kv, cap, self.head_dim, dtype=dtype, device=dev)
                      for _ in self.body.layers]
        self.v_buf = [torch.empty(rows, self.n_kv, cap, self.head_dim, dtype=dtype, device=dev)
                      for _ in self.body.layers]
        self.k, self.v = [c[:nP] for c in self.k_buf], [c[:nP] for c in self.v_buf]
        self.key_ok = torch.zeros(nP, cap, dtype=torch.bool, device=dev)
        self.t = 0
        logits = self._forward(prompt_ids, positions_from_mask(prompt_mask), prompt_mask.bool())
        if repeats > 1:     # each distinct prompt ran once; its cache is copied to its rows
            self.keep(torch.arange(nP, device=dev).repeat_interleave(repeats))
        return logits.repeat_interleave(repeats, 0)

    def step(self, feed: Tensor, attn: Tensor, pos: Tensor) -> Tensor:
        return self._forward(feed[:, None], pos[:, None], attn[:, -1:].bool())

    def keep(self, rows: Tensor) -> None:
        """Hold these rows of the ones held now, in this order (repeats copy a row: the sampler splits a node).
        The written part of each cache is gathered into the first rows of its buffer: one move of the used
        prefix, no allocation."""
        n, held, t = len(rows), len(self.key_ok), self.t
        for buf in self.k_buf + self.v_buf:
            buf[:n, :, :t] = buf[:held, :, :t].index_select(0, rows)
        self.k, self.v = [c[:n] for c in self.k_buf], [c[:n] for c in self.v_buf]
        self.key_ok = self.key_ok.index_select(0, rows)


DROP_FINISHED_AT = 0.75   # the sampler drops finished nodes once at most this share of the nodes it holds runs


def make_decoder(model, allowed: Tensor | None, stop_id: int, fast: bool | None = None):
    """The lean decoder where the architecture allows it (and the stop action is an allowed token), else HF's."""
    if fast is None:
        fast = _LlamaDecoder.supports(model)
    if fast and (allowed is None or bool(allowed[stop_id])):
        return _LlamaDecoder(model, allowed)
    return _HFDecoder(model)


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], n: int, cfg: SamplingConfig, *, stop_id: int,
           allowed: Tensor | None = None, tool: Tool | None = None, context: int | None = None,
           generator: torch.Generator | None = None, fast: bool | None = None) -> Trajectories:
    """Sample n continuations of every prompt. Rows are prompt-major: row = prompt_index * n + k.

    `fast` (default: where supported) decodes with `_LlamaDecoder`; False forces the generic HF forward."""
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n}")
    if not prompts:
        raise ValueError("no prompts to sample from")
    pad_id = tokenizer.pad_token_id
    ids = encode(tokenizer, prompts)
    budget = cfg.max_len * (1 + (cfg.max_tool_tokens if tool else 0))
    check_context(ids, budget, context or 10**9, prompts)
    dev = model_device(model)
    allowed = None if allowed is None else allowed.to(dev)
    prompt_ids, prompt_mask = left_pad(ids, pad_id, dev)
    decoder = make_decoder(model, allowed, stop_id, fast)
    B = len(prompts) * n
    logits = decoder.prefill(prompt_ids, prompt_mask, 1, budget, capacity=B)
    # columns of `logits`: the allowed tokens (lean decoder) or the whole vocabulary (masked here)
    vocab = decoder.vocab
    col_bias = column_mask_bias(allowed) if vocab is None and allowed is not None else None
    stop_col = stop_id if vocab is None else int((vocab == stop_id).nonzero()[0, 0])
    nodes = _Nodes(decoder, prompt_mask, n)

    rows = _RowStates(B)
    while logits is not None:
        if col_bias is not None:
            logits = logits + col_bias
        running = [b for b in range(B) if not rows.done[b]]
        row_logits = nodes.row_logits(logits, running)
        block_stop = torch.tensor([rows.n_actions[b] for b in running], device=dev) < cfg.min_len
        chosen, lse = _choose_tokens(row_logits, cfg, block_stop, stop_col, generator,
                                     torch.tensor(running, device=dev), B)
        # one conversion per step, not per row
        chosen_lp = (row_logits.gather(1, chosen[:, None]) - lse).squeeze(1).tolist()
        stop_lp = (row_logits[:, stop_col] - lse[:, 0]).tolist()
        chosen_ids = (chosen if vocab is None else vocab[chosen]).tolist()
        feed = rows.advance(running, chosen_ids, chosen_lp, stop_lp, cfg, stop_id, tool, tokenizer, pad_id)
        logits = nodes.step(running, feed, rows.done, pad_id)

    texts = [tokenizer.decode(s, skip_special_tokens=True) for s in rows.states]
    prompt_rows = [p for p in prompts for _ in range(n)]
    groups = [i for i in range(len(prompts)) for _ in range(n)]
    return from_rows(prompt_rows, groups, [ids[g] for g in groups], rows.states, rows.acts, rows.stopped,
                     rows.log_pf, rows.log_pterm, texts, pad_id, device=dev)


class _Nodes:
    """Which decoder row (node) each batch row reads. Rows that have written the same tokens share one: each
    prompt starts as one node, and a node splits (its cache row copied) when its rows draw different tokens."""

    def __init__(self, decoder, prompt_mask: Tensor, n: int):
        self.decoder = decoder
        self.of = [b // n for b in range(len(prompt_mask) * n)]
        self.attn, self.next_pos = prompt_mask, prompt_mask.sum(-1)

    def row_logits(self, logits: Tensor, running: list[int]) -> Tensor:
        """[len(running), V]: each running row's node's logits (no copy while every node is one row, in order)."""
        nodes = torch.tensor([self.of[b] for b in running], device=logits.device)
        if len(running) == len(logits) and bool((nodes == torch.arange(len(nodes), device=logits.device)).all()):
            return logits
        return logits.index_select(0, nodes)

    def step(self, running: list[int], feed: list[int], done: list[bool], pad_id: int) -> Tensor | None:
        """Move each row that runs on to the child (its node, the token it feeds) and run the decoder one step
        on the nodes; None when every row has finished. Finished nodes are dropped when a node splits or once at
        most `DROP_FINISHED_AT` of the held nodes run; until then they are fed padding (attention 0)."""
        moves: dict[tuple[int, int], list[int]] = {}
        for j, b in enumerate(running):
            if not done[b]:
                moves.setdefault((self.of[b], feed[j]), []).append(b)
        if not moves:
            return None
        dev, held = self.attn.device, len(self.attn)
        if len(moves) > len({node for node, _ in moves}) or len(moves) <= DROP_FINISHED_AT * held:
            parents = torch.tensor([node for node, _ in moves], device=dev)
            self.decoder.keep(parents)
            self.attn, self.next_pos = self.attn.index_select(0, parents), self.next_pos.index_select(0, parents)
            feed_nodes = [tok for _, tok in moves]
            for i, members in enumerate(moves.values()):
                for b in members:
                    self.of[b] = i
            alive = torch.ones(len(moves), dtype=torch.long, device=dev)
        else:
            feed_nodes = [pad_id] * held
            alive = torch.zeros(held, dtype=torch.long, device=dev)
            for node, tok in moves:
                feed_nodes[node], alive[node] = tok, 1
        self.attn = torch.cat([self.attn, alive[:, None]], dim=1)
        logits = self.decoder.step(torch.tensor(feed_nodes, dtype=torch.long, device=dev), self.attn, self.next_pos)
        self.next_pos = self.next_pos + 1
        return logits


class _RowStates:
    """The sampler's per-row Python state: what each row has written, and the tool tokens it must still feed."""

    def __init__(self, B: int):
        self.states = [[] for _ in range(B)]
        self.acts = [[] for _ in range(B)]
        self.log_pf = [[] for _ in range(B)]
        self.log_pterm = [[] for _ in range(B)]
        self.pending = [[] for _ in range(B)]
        self.stopped = [False] * B
        self.done = [False] * B
        self.n_actions = [0] * B

    def advance(self, held: list[int], chosen_ids: list[int], chosen_lp: list[float], stop_lp: list[float],
                cfg: SamplingConfig, stop_id: int, tool: Tool | None, tokenizer, pad_id: int) -> list[int]:
        """Apply one lock-step to the rows `held` (the values are aligned with it): each live row feeds a pending
        tool token or takes its sampled action (the stop ends it; max_len forces the stop). Returns the token
        each held row feeds next (pad for finished rows)."""
        feed = [pad_id] * len(held)
        for j, b in enumerate(held):
            if self.done[b]:
                continue
            if self.pending[b]:
                tok = self.pending[b].pop(0)
                self.states[b].append(tok)
                self.acts[b].append(False)
                feed[j] = tok
                continue
            forced = self.n_actions[b] >= cfg.max_len
            self.log_pterm[b].append(0.0 if forced else stop_lp[j])
            tok = chosen_ids[j]
            if forced or tok == stop_id:
                self.done[b], self.stopped[b] = True, not forced
                continue
            self.log_pf[b].append(chosen_lp[j])
            self.states[b].append(tok)
            self.acts[b].append(True)
            self.n_actions[b] += 1
            feed[j] = tok
            if tool is not None:
                inserted = tool(tokenizer.decode(self.states[b], skip_special_tokens=True))
                if inserted:
                    self.pending[b] = tokenizer(inserted, add_special_tokens=False)["input_ids"][: cfg.max_tool_tokens]
        return feed


# Architectures whose logits are exactly lm_head(final hidden state): for them the teacher-forced passes run the
# decoder body and apply the output layer only where (and to the vocabulary rows that) a log-prob is needed.
_PLAIN_HEAD = {"llama", "gpt2", "qwen2", "mistral", "gptj"}


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def grouped_query_sdpa(device: torch.device):
    """On the CPU, let transformers' SDPA attention read the few key/value heads of a grouped-query model in place
    (`enable_gqa`) even under our padding/prefix masks, instead of copying them once per query head (`repeat_kv`):
    SmolLM2's 3 KV heads for 9 query heads made those copies ~180 MB of the 16 x 20 training pass's saved
    activations, and the copy time. Exact (the same sums; tests/test_perf_neutral.py). Elsewhere it leaves
    transformers' choice alone: on CUDA a mask with `enable_gqa` falls back to the slow math kernel."""
    if torch.device(device).type != "cpu" or os.environ.get(_FORCE_GQA) is not None:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


def _body_and_head(model):
    """(decoder body, output layer) of a plain-head causal LM (through a peft wrapper: the LoRA layers live in the
    body's modules, so calling the body applies them, or not inside `adapters_off`); None for any other model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "model_type", None) not in _PLAIN_HEAD:
        return None
    try:
        body, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if body is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return None
    head = _effective_linear(head)          # (weight, bias), adapters included if the output layer has any
    return None if head is None else (body, head)


def _context_state_positions(ctx_mask: Tensor, S: int) -> Tensor:
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


def _tail_hidden(model, ctx_ids: Tensor, ctx_mask: Tensor, rest_ids: Tensor, attn: Tensor, pos: Tensor):
    """Final hidden states (or logits, for a model without a plain head) of the last context position and every
    `rest` position, [B, 1 + R, H or V], and the model's (body, head) parts; gradients kept when enabled.

    `attn` is the 2D mask over [context | rest] or a 4D additive bias [B, 1, C+R, C+R]. Each distinct context
    runs once and its KV cache is copied to its rows: with gradients this is still exact, the cache copies'
    gradients sum back into the one context pass (forward and backward of each prompt run once)."""
    return _tail_pass(model, ctx_ids, ctx_mask, rest_ids, attn, pos)[:2]


def _tail_pass(model, ctx_ids: Tensor, ctx_mask: Tensor, rest_ids: Tensor, attn: Tensor, pos: Tensor,
               keep_cache: bool = False):
    """`_tail_hidden`, plus the KV cache of [context | rest] per row when `keep_cache` (else None)."""
    parts = _body_and_head(model)
    run, field = _runner(model, parts)
    with grouped_query_sdpa(ctx_ids.device):
        return _tail_hidden_pass(run, field, parts, ctx_ids, ctx_mask, rest_ids, attn, pos, keep_cache)


def _runner(model, parts) -> tuple:
    """(what to call, the output field it gives): the body's hidden states when the model has a plain head (the
    caller applies the head in blocks), else the whole model's logits."""
    return (parts[0], "last_hidden_state") if parts is not None else (model, "logits")


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


HEAD_BLOCK = 2048     # output-layer columns per block in `_head_log_probs`: [positions, 2048] fp32 logits at a time


def column_mask_bias(allowed: Tensor) -> Tensor:
    """[V] float: 0 where allowed, -inf elsewhere. Adding it masks [B, V] logits ~7x faster on this CPU than
    `masked_fill` with the broadcast [V] mask (0.3 vs 2.2 ms at 16 x 49k), with the same values."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed.bool(), float("-inf"))


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


def _head_log_probs(hidden: Tensor, parts, targets: Tensor, vocab: Tensor | None = None,
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


def policy_log_probs(model, traj: Trajectories, allowed: Tensor | None, stop_id: int) -> tuple[Tensor, Tensor]:
    """Teacher-forced (log_pf [B, L], log_pterm [B, L+1]) of a batch of trajectories, with gradients.

    The state includes tool outputs, so a replayed tool trajectory is scored in the context it was sampled in.
    The shared prompt of a GFlowNet batch runs once (forward and backward; see `_tail_hidden`), and the output
    layer is evaluated only at the S+1 state positions and the allowed tokens' rows. tests/test_perf_neutral.py
    checks it against the plain full-batch pass.
    """
    S = traj.state_ids.shape[1]
    B = len(traj)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    P = traj.prompt_ids.shape[1]
    pos = _context_state_positions(traj.prompt_mask, S)
    if P == 0:
        pos = positions_from_mask(mask)
    hidden, parts = _tail_hidden(model, traj.prompt_ids, traj.prompt_mask, traj.state_ids, mask, pos)
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
        lp = _head_log_probs(hidden, parts, targets, vocab)
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
    pos = _context_state_positions(traj.prompt_mask, S)
    hidden, parts = _tail_hidden(model, traj.prompt_ids, traj.prompt_mask, traj.state_ids, mask, pos)
    lp = _head_log_probs(hidden[:, :S], parts, traj.state_ids[:, :, None])[..., 0]
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
    distinct prompts once (`_tail_hidden`). Equal to one full-batch `state_token_log_probs` to float rounding
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
    pos = _context_state_positions(ctx_mask, S)
    attn = torch.cat([ctx_mask, traj.state_mask], dim=1)
    needs_copy = scored & (block_len[:, None] > 1)         # a one-token suffix is scored by the state pass alone
    hidden, parts, cache = _tail_pass(model, ctx_ids, ctx_mask, traj.state_ids, attn, pos,
                                      keep_cache=bool(needs_copy.any()))
    # position k <= S predicts state token k + 1 and, after a prefix of k state tokens, the suffix's first token
    nxt = torch.cat([traj.state_ids, traj.state_ids.new_zeros(B, 1)], dim=1)
    targets = torch.stack([nxt, suffix[:, :1].expand(B, S + 1)], dim=-1)
    lp = _head_log_probs(hidden, parts, targets)                           # [B, S+1, 2]
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
    dtype = next(model.parameters()).dtype
    bias = _copies_bias(ctx_mask[src], prefix_len, valid, cache.get_seq_length(), dtype)
    cache.reorder_cache(src)
    run, field = _runner(model, parts)
    with grouped_query_sdpa(dev):
        h = getattr(run(input_ids=ids.reshape(R, Q), attention_mask=bias,
                        position_ids=pos.reshape(R, Q), past_key_values=cache, use_cache=True), field)
    targets = suffix[src][:, None, 1:].expand(R, G, M1).reshape(R, Q, 1)
    lp = _head_log_probs(h, parts, targets).reshape(R, G, M1)
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
