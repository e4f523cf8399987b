import itertools

import pytest
import torch

from gfnbench.beam import beam_search
from gfnbench.sampling import SamplingConfig, masked_log_softmax, policy_log_probs, sample

PROMPTS = ["Question: 1 + 2 = ? Answer:", "the cat", "a", "once upon a time there was"]


def _mask(tok, ids) -> torch.Tensor:
    allowed = torch.zeros(len(tok), dtype=torch.bool)
    allowed[list(ids)] = True
    allowed[tok.eos_token_id] = True
    return allowed


def _digit_mask(tok) -> torch.Tensor:
    ok = [i for i in range(len(tok)) if tok.decode([i]) and all(c in " 0123456789+-=" for c in tok.decode([i]))]
    return _mask(tok, ok)


def _ids(tok, *pieces) -> list[int]:
    out = []
    for p in pieces:
        (i,) = tok(p, add_special_tokens=False)["input_ids"]
        out.append(i)
    return out


def _eq_tool(text):
    """Toy calculator: a state ending in '=' gets ' 7' written after it."""
    return " 7" if text.rstrip().endswith("=") else None


def _beam(lm, prompts, n_return, cfg, **kw):
    return beam_search(lm.model, lm.tokenizer, prompts, n_return, cfg, stop_id=lm.eos_id, **kw)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt2"])
def test_one_beam_is_greedy(fixture, request):
    lm = request.getfixturevalue(fixture)
    cfg = SamplingConfig(greedy=True, min_len=1, max_len=6)
    allowed = _digit_mask(lm.tokenizer)
    for kw in ({}, {"allowed": allowed, "tool": _eq_tool}):
        greedy = sample(lm.model, lm.tokenizer, PROMPTS, 1, cfg, stop_id=lm.eos_id, **kw)
        beam = _beam(lm, PROMPTS, 1, cfg, num_beams=1, **kw)
        assert beam.texts == greedy.texts
        assert torch.equal(beam.state_ids, greedy.state_ids) and torch.equal(beam.is_action, greedy.is_action)
        torch.testing.assert_close(beam.log_pf, greedy.log_pf, atol=1e-5, rtol=0)
        torch.testing.assert_close(beam.log_pterm, greedy.log_pterm, atol=1e-5, rtol=0)


def _brute_force(lm, prompt, tokens, allowed, max_len, min_len=1):
    """Score of every sequence of `tokens` (lengths min_len..max_len), by explicit unbatched forward passes."""
    tok = lm.tokenizer
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    memo = {}

    def logp(prefix):
        if prefix not in memo:
            with torch.no_grad():
                logits = lm.model(torch.tensor([base + list(prefix)])).logits[0, -1]
            memo[prefix] = masked_log_softmax(logits, allowed)
        return memo[prefix]

    scores = {}
    for n in range(min_len, max_len + 1):
        for seq in itertools.product(tokens, repeat=n):
            s = sum(float(logp(seq[:i])[t]) for i, t in enumerate(seq))
            scores[seq] = s + (float(logp(seq)[lm.eos_id]) if n < max_len else 0.0)
    return scores


def test_exact_against_brute_force(tiny):
    tokens = _ids(tiny.tokenizer, "1", "2", "=", "+")
    allowed = _mask(tiny.tokenizer, tokens)
    cfg = SamplingConfig(min_len=1, max_len=3)
    prompts = PROMPTS[:2]                         # different lengths: exercises left padding
    truth = [sorted(_brute_force(tiny, p, tokens, allowed, 3).items(), key=lambda kv: -kv[1]) for p in prompts]
    n_all = len(truth[0])                         # 4 + 16 + 64 sequences
    full = _beam(tiny, prompts, n_all, cfg, num_beams=n_all, allowed=allowed)
    top3 = _beam(tiny, prompts, 3, cfg, num_beams=64, allowed=allowed)
    for p, ranked in enumerate(truth):
        got = full.extras["beam_score"][p * n_all:(p + 1) * n_all]
        torch.testing.assert_close(got, torch.tensor([s for _, s in ranked]), atol=1e-4, rtol=0)
        for k in range(3):
            seq, score = ranked[k]
            row = p * 3 + k
            assert top3.state_ids[row, : top3.lengths[row]].tolist() == list(seq)
            assert bool(top3.stopped[row]) == (len(seq) < 3)
            assert abs(float(top3.extras["beam_score"][row]) - score) < 1e-4
    assert top3.group.tolist() == [0, 0, 0, 1, 1, 1]


def test_log_probs_equal_teacher_forced_and_scores_add_up(tiny):
    tok = tiny.tokenizer
    allowed = _digit_mask(tok)
    cfg = SamplingConfig(min_len=2, max_len=7)
    traj = _beam(tiny, PROMPTS, 3, cfg, num_beams=6, num_groups=2, diversity_penalty=0.5, allowed=allowed,
                 tool=_eq_tool)
    assert len(traj) == 12 and traj.extras["beam_score"].shape == (12,)
    assert (~traj.is_action[traj.state_mask.bool()]).any(), "the tool never fired: test data too weak"
    with torch.no_grad():
        log_pf, log_pterm = policy_log_probs(tiny.model, traj, allowed, tiny.eos_id)
    m = traj.action_mask()
    torch.testing.assert_close(log_pf[m], traj.log_pf[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(log_pterm, traj.log_pterm, atol=1e-4, rtol=1e-4)
    end = traj.log_pterm.gather(1, traj.lengths[:, None]).squeeze(1)
    torch.testing.assert_close(traj.log_pf.sum(1) + end, traj.extras["beam_score"], atol=1e-4, rtol=0)
    for p in range(len(PROMPTS)):           # ranked best first within each prompt
        s = traj.extras["beam_score"][p * 3:(p + 1) * 3]
        assert (s[:-1] >= s[1:]).all()


def test_tool_tokens_are_forced_not_actions(tiny):
    tok = tiny.tokenizer
    eq, seven = _ids(tok, "=", " 7")
    allowed = _mask(tok, [eq])                   # every action is "=" (or stop): the tool must fire
    cfg = SamplingConfig(min_len=2, max_len=3)
    traj = _beam(tiny, PROMPTS[:2], 2, cfg, num_beams=2, allowed=allowed, tool=_eq_tool)
    for row in range(len(traj)):
        n = int(traj.state_mask[row].sum())
        state, acts = traj.state_ids[row, :n].tolist(), traj.is_action[row, :n].tolist()
        assert [t for t, a in zip(state, acts) if a] == [eq] * int(traj.lengths[row])
        assert [t for t, a in zip(state, acts) if not a] == [seven] * int(traj.lengths[row])
        assert traj.texts[row].startswith("= 7=")


def test_diverse_beam_is_more_diverse(tiny):
    cfg = SamplingConfig(min_len=1, max_len=5)
    allowed = _digit_mask(tiny.tokenizer)
    plain = _beam(tiny, PROMPTS, 4, cfg, num_beams=4, allowed=allowed)
    diverse = _beam(tiny, PROMPTS, 4, cfg, num_beams=4, num_groups=4, diversity_penalty=1e3, allowed=allowed)

    def distinct(traj, key):
        return sum(len({key(traj, r) for r in range(p * 4, (p + 1) * 4)}) for p in range(len(PROMPTS)))

    text, first = (lambda t, r: t.texts[r]), (lambda t, r: int(t.state_ids[r, 0]))
    assert distinct(diverse, text) >= distinct(plain, text)
    # the penalty acts on each step's choice: plain beams share first actions, the groups cannot
    assert distinct(diverse, first) == 4 * len(PROMPTS) > distinct(plain, first)


def test_min_and_max_len(tiny):
    tok = tiny.tokenizer
    allowed = _mask(tok, _ids(tok, "1"))         # stop has ~1/2 of the mass: beams would stop at once
    free = _beam(tiny, PROMPTS[:2], 2, SamplingConfig(max_len=6), num_beams=4, allowed=allowed)
    assert (free.lengths == 0).any(), "min_len would not bind: test data too weak"
    for lo, hi in [(3, 6), (4, 4)]:
        traj = _beam(tiny, PROMPTS[:2], 2, SamplingConfig(min_len=lo, max_len=hi), num_beams=4, allowed=allowed)
        assert (traj.lengths >= lo).all() and (traj.lengths <= hi).all()
        end = traj.log_pterm.gather(1, traj.lengths[:, None]).squeeze(1)
        assert (traj.lengths[~traj.stopped] == hi).all()
        assert (end[~traj.stopped] == 0).all() and (end[traj.stopped] < 0).all()
    assert (~traj.stopped).all()                 # min_len == max_len: every stop is forced


def test_bad_arguments(tiny):
    cfg = SamplingConfig(max_len=2)
    for kw in ({"n_return": 1, "num_beams": 0}, {"n_return": 3, "num_beams": 2},
               {"n_return": 2, "num_beams": 4, "num_groups": 3}):
        with pytest.raises(ValueError):
            _beam(tiny, ["a"], kw.pop("n_return"), cfg, **kw)
    with pytest.raises(ValueError, match="context"):
        _beam(tiny, ["the " * 600], 1, cfg, num_beams=1, context=512)
