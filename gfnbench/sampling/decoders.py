"""The sampler's decode step: HF's generic forward with a DynamicCache, or a lean hand-written Llama decode with a
preallocated cache (`make_decoder` picks). Both expose prefill / step / keep and give equal logits."""
from __future__ import annotations

import torch
from torch import Tensor

from gfnbench.sampling.model_parts import effective_linear, fused_low_rank
from gfnbench.sampling.tokens import few_allowed, positions_from_mask


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


class _Linear:
    """A (weight, bias) pair applied as a Linear."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        self.weight, self.bias = weight, bias

    def __call__(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class _LlamaDecoder:
    """The sampler's decode for Llama-family models, without the generic HF machinery: a preallocated KV cache
    written in place (no per-step concatenation), grouped-query attention as one batched matmul per layer over
    the cache prefix (no repeated or copied K/V), no per-step 4D mask construction, the LoRA of the attention
    projections merged into one fused q|k|v weight and one o weight per call (no adapter matmuls per token; with
    fp32 adapters on a bf16 base, `FusedLowRank`'s two matmuls instead),
    and the output layer evaluated only on the allowed tokens' rows (when they are few). Norms, rotary embedding
    and MLP are the model's own modules. Equal to `_HFDecoder` to float rounding (tests/test_perf_neutral.py)."""

    SUPPORTED = {"llama"}

    @classmethod
    def supports(cls, model) -> bool:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = base.config
        return (getattr(cfg, "model_type", None) in cls.SUPPORTED and getattr(cfg, "pretraining_tp", 1) == 1
                and not getattr(cfg, "final_logit_softcapping", None) and hasattr(base, "model")
                and hasattr(base.model, "rotary_emb") and effective_linear(base.lm_head) is not None)

    def __init__(self, model, allowed: Tensor | None):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body, cfg = base.model, base.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scaling = self.body.layers[0].self_attn.scaling
        head_w, head_b = effective_linear(base.lm_head)
        few = allowed is not None and few_allowed(int(allowed.sum()), allowed.numel())
        self.vocab = allowed.nonzero().squeeze(-1) if few else None      # else the sampler masks the whole layer
        self.head_w = head_w if self.vocab is None else head_w[self.vocab]
        self.head_b = None if head_b is None else (head_b if self.vocab is None else head_b[self.vocab])
        self.qkv, self.o = [], []
        for layer in self.body.layers:
            attn = layer.self_attn
            parts = [effective_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
            if all(p is not None for p in parts):
                bias = None if all(p[1] is None for p in parts) else torch.cat(
                    [p[1] if p[1] is not None else p[0].new_zeros(p[0].shape[0]) for p in parts])
                self.qkv.append(_Linear(torch.cat([p[0] for p in parts]), bias))
            else:       # adapters wider than the base (bf16-true): fused, or peft's own layers as the last resort
                self.qkv.append(fused_low_rank((attn.q_proj, attn.k_proj, attn.v_proj), head_w.dtype))
            o = effective_linear(attn.o_proj)
            self.o.append(_Linear(*o) if o is not None else fused_low_rank((attn.o_proj,), head_w.dtype))
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
                q, k, v = qkv(h).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
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
            probs = torch.softmax(scores * self.scaling + bias, dim=-1, dtype=torch.float32).to(scores.dtype)
            probs = probs.view(b, nkv, rep * T, t1)          # softmax in fp32 (as HF's eager attention), then x.dtype
            o = torch.matmul(probs, vc[:, :, :t1]).view(b, nh, T, hd).transpose(1, 2).reshape(b, T, nh * hd)
            x = x + (o_w(o) if o_w is not None else attn.o_proj(o))
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


def make_decoder(model, allowed: Tensor | None, stop_id: int, fast: bool | None = None):
    """The lean decoder where the architecture allows it (and the stop action is an allowed token), else HF's."""
    if fast is None:
        fast = _LlamaDecoder.supports(model)
    if fast and (allowed is None or bool(allowed[stop_id])):
        return _LlamaDecoder(model, allowed)
    return _HFDecoder(model)
