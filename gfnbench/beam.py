"""Beam search and diverse beam search over the same lock-step, tool-aware decoding as `sampling.sample`.

HF `generate` cannot call a tool mid-sequence, so the beam baselines are written here: a beam that is feeding
a tool's output has exactly one continuation (the forced token, score unchanged), a finished beam has one
(itself), a free beam proposes its best tokens. Scores are sums of the policy's log-probs, stop included
(length penalty 0, as the paper's baselines). Diverse beam (Vijayakumar et al. 2018) subtracts a Hamming
penalty for tokens earlier groups of the same prompt chose at this step, for selection only.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from gfnbench.sampling import SamplingConfig, check_context, encode, masked_log_softmax, prefill
from gfnbench.trajectories import Trajectories, from_rows, left_pad

NEG_INF = float("-inf")


@dataclass
class Beam:
    score: float = 0.0
    state: list = field(default_factory=list)
    acts: list = field(default_factory=list)
    log_pf: list = field(default_factory=list)
    log_pterm: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    done: bool = False
    stopped: bool = False

    def copy(self) -> "Beam":
        return replace(self, state=list(self.state), acts=list(self.acts), log_pf=list(self.log_pf),
                       log_pterm=list(self.log_pterm), pending=list(self.pending))

    @property
    def n_actions(self) -> int:
        return len(self.log_pf)


def _candidates(beam: Beam, logp: torch.Tensor, cfg: SamplingConfig, stop_id: int, width: int):
    """(score, token or None, is_forced) continuations of one beam."""
    if beam.done:
        return [(beam.score, None, True)]
    if beam.pending:
        return [(beam.score, beam.pending[0], True)]
    if beam.n_actions >= cfg.max_len:
        return [(beam.score, stop_id, True)]
    scores = logp.clone()
    if beam.n_actions < cfg.min_len:
        scores[stop_id] = NEG_INF
    top = scores.topk(min(width, int(torch.isfinite(scores).sum())))
    return [(beam.score + float(v), int(t), False) for v, t in zip(top.values, top.indices)]


def _advance(beam: Beam, token, forced: bool, logp, stop_id: int, tool, tokenizer, cfg) -> tuple[Beam, int | None]:
    """The child beam after taking `token`; returns it and the token to feed (None: nothing)."""
    child = beam.copy()
    if beam.done:
        return child, None
    if beam.pending:
        child.state.append(child.pending.pop(0))
        child.acts.append(False)
        return child, child.state[-1]
    child.log_pterm.append(0.0 if (forced and token == stop_id) else float(logp[stop_id]))
    if token == stop_id:
        child.done, child.stopped = True, not forced
        child.score = beam.score if forced else beam.score + float(logp[stop_id])
        return child, None
    child.log_pf.append(float(logp[token]))
    child.state.append(token)
    child.acts.append(True)
    child.score = beam.score + float(logp[token])
    if tool is not None:
        inserted = tool(tokenizer.decode(child.state, skip_special_tokens=True))
        if inserted:
            child.pending = tokenizer(inserted, add_special_tokens=False)["input_ids"][: cfg.max_tool_tokens]
    return child, token


@torch.no_grad()
def beam_search(model, tokenizer, prompts: list[str], n_return: int, cfg: SamplingConfig, *, num_beams: int,
                num_groups: int = 1, diversity_penalty: float = 0.0, stop_id: int, allowed=None, tool=None,
                context: int | None = None) -> Trajectories:
    """The n_return best beams per prompt (over all groups, ranked by score), prompt-major rows."""
    if num_beams < 1 or n_return < 1 or n_return > num_beams:
        raise ValueError(f"need 1 <= n_return <= num_beams, got n_return={n_return}, num_beams={num_beams}")
    if num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of num_groups ({num_groups})")
    K, G, per_group = num_beams, num_groups, num_beams // num_groups
    ids = encode(tokenizer, prompts)
    check_context(ids, cfg.max_len * (1 + (cfg.max_tool_tokens if tool else 0)), context or 10**9, prompts)
    prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id)
    logits, cache = prefill(model, prompt_ids, prompt_mask, K)
    attn = prompt_mask.repeat_interleave(K, 0)
    # one live beam per group at the start; the other slots start at -inf so no duplicate survives
    beams = [Beam(score=0.0 if (k % per_group) == 0 else NEG_INF) for _ in prompts for k in range(K)]
    while not all(b.done for b in beams):
        logp = masked_log_softmax(logits, allowed)
        parents, feeds, new_beams = [], [], []
        for p in range(len(prompts)):
            chosen_now: dict[int, int] = {}
            for g in range(G):
                rows = range(p * K + g * per_group, p * K + (g + 1) * per_group)
                cands = [(s, r, t, f) for r in rows for s, t, f in _candidates(beams[r], logp[r], cfg, stop_id, K)]
                ranked = sorted(cands, key=lambda c: c[0] - diversity_penalty * chosen_now.get(c[2], 0)
                                if c[2] is not None and not c[3] else c[0], reverse=True)[:per_group]
                while len(ranked) < per_group:       # fewer candidates than slots: pad with dead copies
                    ranked.append((NEG_INF, ranked[0][1], ranked[0][2], ranked[0][3]))
                for score, r, token, forced in ranked:
                    child, feed = _advance(beams[r], token, forced, logp[r], stop_id, tool, tokenizer, cfg)
                    if score == NEG_INF:
                        child.score, child.done = NEG_INF, True
                    new_beams.append(child)
                    parents.append(r)
                    feeds.append(feed)
                    if token is not None and not forced:
                        chosen_now[token] = chosen_now.get(token, 0) + 1
        beams = new_beams
        if all(b.done for b in beams):
            break
        index = torch.tensor(parents)
        cache.reorder_cache(index)
        attn = attn[index]
        alive = torch.tensor([f is not None for f in feeds], dtype=torch.long)
        feed_ids = torch.tensor([tokenizer.pad_token_id if f is None else f for f in feeds])
        attn = torch.cat([attn, alive[:, None]], dim=1)
        positions = (attn.sum(-1) - 1)[:, None]
        out = model(input_ids=feed_ids[:, None], attention_mask=attn, position_ids=positions,
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()

    picked, scores = [], []
    for p in range(len(prompts)):
        group = sorted(beams[p * K:(p + 1) * K], key=lambda b: b.score, reverse=True)[:n_return]
        picked += group
        scores += [b.score for b in group]
    rows = [p for p in prompts for _ in range(n_return)]
    groups = [i for i in range(len(prompts)) for _ in range(n_return)]
    traj = from_rows(rows, groups, [ids[g] for g in groups], [b.state for b in picked], [b.acts for b in picked],
                     [b.stopped for b in picked], [b.log_pf for b in picked], [b.log_pterm for b in picked],
                     [tokenizer.decode(b.state, skip_special_tokens=True) for b in picked], tokenizer.pad_token_id)
    traj.extras["beam_score"] = torch.tensor(scores)
    return traj
