"""Beam search and diverse beam search over the same lock-step, tool-aware decoding as `sampling.sample`.

HF `generate` cannot call a tool mid-sequence, so the beam baselines are written here. Every step feeds one
token per beam row, as the sampler does: a beam feeding a tool's output has exactly one continuation (the
forced token, score unchanged), a finished beam has one (itself, fed a pad), a free beam proposes its best
tokens. Scores are sums of the policy's log-probs, stop included (length penalty 0, as the paper's
baselines); a stop forced at max_len costs 0. Diverse beam (Vijayakumar et al. 2018) splits each prompt's
beams into groups decoded in turn and subtracts a Hamming penalty for tokens that earlier groups of the same
prompt chose at this step; the penalty shapes selection only, stored log-probs stay the policy's.

Returned beams: the n_return best finished beams of each prompt over all groups (as HF's group beam search
returns them), not a fixed quota per group.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor

from gfnbench.devices import model_device
from gfnbench.sampling import SamplingConfig, Tool, check_context, encode, masked_log_softmax, prefill
from gfnbench.trajectories import Trajectories, from_rows, left_pad

NEG_INF = float("-inf")


@dataclass
class Beam:
    """One hypothesis. A dead beam (score -inf, done) only fills a slot when there are too few candidates."""

    score: float = 0.0
    state: list[int] = field(default_factory=list)
    acts: list[bool] = field(default_factory=list)
    log_pf: list[float] = field(default_factory=list)
    log_pterm: list[float] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    done: bool = False
    stopped: bool = False

    def copy(self) -> Beam:
        return replace(self, state=list(self.state), acts=list(self.acts), log_pf=list(self.log_pf),
                       log_pterm=list(self.log_pterm), pending=list(self.pending))

    @property
    def n_actions(self) -> int:
        return len(self.log_pf)

    @property
    def dead(self) -> bool:
        return self.score == NEG_INF


def _dead() -> Beam:
    return Beam(score=NEG_INF, done=True)


class Candidate(NamedTuple):
    score: float        # policy score of the child, without the diversity penalty
    row: int            # parent beam row (also its KV-cache row)
    token: int | None   # None: a finished beam carried over
    forced: bool        # a tool token, a forced stop or a carry-over: not a choice, never penalised


def check_beam_args(n_return: int, num_beams: int, num_groups: int) -> None:
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if num_groups < 1 or num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be a positive multiple of num_groups ({num_groups})")
    if not 1 <= n_return <= num_beams:
        raise ValueError(f"need 1 <= n_return <= num_beams, got n_return={n_return}, num_beams={num_beams}")


def _top_tokens(beams: list[Beam], logp: Tensor, cfg: SamplingConfig, stop_id: int,
                width: int) -> tuple[list[list[float]], list[list[int]]]:
    """Every row's `width` best (log-prob, token) in one batched topk, stop blocked below min_len."""
    scores = logp.clone()
    below_min = torch.tensor([b.n_actions < cfg.min_len for b in beams], device=logp.device)
    scores[below_min, stop_id] = NEG_INF
    top = scores.topk(min(width, scores.shape[-1]), dim=-1)
    return top.values.tolist(), top.indices.tolist()


def _candidates(beam: Beam, row: int, values: list[float], tokens: list[int], cfg: SamplingConfig,
                stop_id: int) -> list[Candidate]:
    """The continuations of one beam: one if it is finished, feeding a tool, or at max_len; else its top tokens."""
    if beam.dead:
        return []
    if beam.done:
        return [Candidate(beam.score, row, None, True)]
    if beam.pending:
        return [Candidate(beam.score, row, beam.pending[0], True)]
    if beam.n_actions >= cfg.max_len:
        return [Candidate(beam.score, row, stop_id, True)]
    return [Candidate(beam.score + v, row, t, False) for v, t in zip(values, tokens) if v > NEG_INF]


def _select(cands: list[Candidate], k: int, penalty: float, counts: dict[int, int]) -> list[Candidate]:
    """The k best candidates after the Hamming penalty (counts: how often earlier groups chose each token)."""
    def key(c: Candidate) -> float:
        return c.score if c.forced else c.score - penalty * counts.get(c.token, 0)
    return sorted(cands, key=key, reverse=True)[:k]


def _advance(beam: Beam, cand: Candidate, logp: Tensor, stop_id: int, tool: Tool | None, tokenizer,
             cfg: SamplingConfig) -> tuple[Beam, int | None]:
    """The child beam after `cand`, and the token to feed the model (None: finished, feed a pad)."""
    child = beam.copy()
    if beam.done:
        return child, None
    if beam.pending:
        tok = child.pending.pop(0)
        child.state.append(tok)
        child.acts.append(False)
        return child, tok
    child.score = cand.score
    if cand.token == stop_id:
        child.log_pterm.append(0.0 if cand.forced else float(logp[stop_id]))
        child.done, child.stopped = True, not cand.forced
        return child, None
    child.log_pterm.append(float(logp[stop_id]))
    child.log_pf.append(float(logp[cand.token]))
    child.state.append(cand.token)
    child.acts.append(True)
    if tool is not None:
        inserted = tool(tokenizer.decode(child.state, skip_special_tokens=True))
        if inserted:
            child.pending = tokenizer(inserted, add_special_tokens=False)["input_ids"][: cfg.max_tool_tokens]
    return child, cand.token


def _initial_beams(n_prompts: int, num_beams: int, per_group: int) -> list[Beam]:
    """One live beam per group, the rest dead: identical copies would otherwise fill every slot with one prefix."""
    return [Beam() if k % per_group == 0 else _dead() for _ in range(n_prompts) for k in range(num_beams)]


def _feed(model, cache, attn: Tensor, parents: list[int], feeds: list[int | None], pad_id: int):
    """Reorder the KV cache to the chosen parents and run one token per row. Returns (logits, attn)."""
    dev = attn.device
    index = torch.tensor(parents, dtype=torch.long, device=dev)
    cache.reorder_cache(index)
    alive = torch.tensor([f is not None for f in feeds], dtype=torch.long, device=dev)
    attn = torch.cat([attn[index], alive[:, None]], dim=1)
    ids = torch.tensor([pad_id if f is None else f for f in feeds], dtype=torch.long, device=dev)
    positions = (attn.sum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids[:, None], attention_mask=attn, position_ids=positions[:, None],
                past_key_values=cache, use_cache=True)
    return out.logits[:, -1].float(), attn


def _best(beams: list[Beam], n: int) -> list[Beam]:
    """The n best finished beams by score; if fewer exist (tiny action space), the best are repeated in order."""
    ranked = sorted((b for b in beams if not b.dead), key=lambda b: b.score, reverse=True)
    if not ranked:
        raise ValueError("beam search found no sequence with finite probability: check `allowed` and min_len")
    return [ranked[i % len(ranked)] for i in range(n)]


def _to_trajectories(prompts: list[str], ids: list[list[int]], picked: list[list[Beam]], tokenizer,
                     device: torch.device) -> Trajectories:
    """Prompt-major rows, with the same fields the sampler fills, plus the beam scores in extras."""
    rows = [(i, b) for i, beams in enumerate(picked) for b in beams]
    traj = from_rows([prompts[i] for i, _ in rows], [i for i, _ in rows], [ids[i] for i, _ in rows],
                     [b.state for _, b in rows], [b.acts for _, b in rows], [b.stopped for _, b in rows],
                     [b.log_pf for _, b in rows], [b.log_pterm for _, b in rows],
                     [tokenizer.decode(b.state, skip_special_tokens=True) for _, b in rows], tokenizer.pad_token_id,
                     device=device)
    traj.extras["beam_score"] = torch.tensor([b.score for _, b in rows], dtype=torch.float32, device=device)
    return traj


@torch.no_grad()
def beam_search(model, tokenizer, prompts: list[str], n_return: int, cfg: SamplingConfig, *, num_beams: int,
                num_groups: int = 1, diversity_penalty: float = 0.0, stop_id: int, allowed: Tensor | None = None,
                tool: Tool | None = None, context: int | None = None) -> Trajectories:
    """The n_return best beams per prompt (over all groups, ranked by score); row = prompt_index * n_return + k."""
    check_beam_args(n_return, num_beams, num_groups)
    if not prompts:
        raise ValueError("no prompts to decode")
    K, G, per_group = num_beams, num_groups, num_beams // num_groups
    pad_id = tokenizer.pad_token_id
    ids = encode(tokenizer, prompts)
    check_context(ids, cfg.max_len * (1 + (cfg.max_tool_tokens if tool else 0)), context or 10**9, prompts)
    dev = model_device(model)
    allowed = None if allowed is None else allowed.to(dev)
    prompt_ids, prompt_mask = left_pad(ids, pad_id, dev)
    logits, cache = prefill(model, prompt_ids, prompt_mask, K)
    attn = prompt_mask.repeat_interleave(K, 0)
    beams = _initial_beams(len(prompts), K, per_group)
    # a beam's top-K tokens always contain its top per_group after the penalty, which hits at most
    # (G - 1) * per_group distinct tokens
    width = K
    while not all(b.done for b in beams):
        logp = masked_log_softmax(logits, allowed)
        values, tokens = _top_tokens(beams, logp, cfg, stop_id, width)
        new_beams, parents, feeds = [], [], []
        for p in range(len(prompts)):
            counts: dict[int, int] = {}
            for g in range(G):
                rows = range(p * K + g * per_group, p * K + (g + 1) * per_group)
                cands = [c for r in rows for c in _candidates(beams[r], r, values[r], tokens[r], cfg, stop_id)]
                chosen = _select(cands, per_group, diversity_penalty, counts)
                for c in chosen:
                    child, feed = _advance(beams[c.row], c, logp[c.row], stop_id, tool, tokenizer, cfg)
                    new_beams.append(child)
                    parents.append(c.row)
                    feeds.append(feed)
                    if not c.forced:
                        counts[c.token] = counts.get(c.token, 0) + 1
                for _ in range(per_group - len(chosen)):
                    new_beams.append(_dead())
                    parents.append(rows[0])
                    feeds.append(None)
        beams = new_beams
        if all(b.done for b in beams):
            break
        logits, attn = _feed(model, cache, attn, parents, feeds, pad_id)
    picked = [_best(beams[p * K:(p + 1) * K], n_return) for p in range(len(prompts))]
    return _to_trajectories(prompts, ids, picked, tokenizer, dev)
