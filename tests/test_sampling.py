import pytest
import torch
from helpers import digit_mask

from gfnbench.sampling import (
    PromptTooLong,
    SamplingConfig,
    every_prefix_log_reward,
    policy_log_probs,
    sample,
    state_token_log_probs,
)
from gfnbench.trajectories import left_pad


def _add_tool(text):
    """Toy calculator: after '=' insert the sum of the two numbers before it."""
    if not text.rstrip().endswith("="):
        return None
    return " 7"


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt2"])
def test_sampled_log_probs_equal_teacher_forced(fixture, request):
    lm = request.getfixturevalue(fixture)
    tok = lm.tokenizer
    allowed = digit_mask(tok)
    g = torch.Generator().manual_seed(1)
    cfg = SamplingConfig(temperature=1.3, min_len=2, max_len=9)
    traj = sample(lm.model, tok, ["Question: 1 + 2 = ? Answer:", "the cat"], 5, cfg, stop_id=lm.eos_id,
                  allowed=allowed, tool=_add_tool, generator=g)
    assert len(traj) == 10
    assert (traj.lengths >= 2).all() and (traj.lengths <= 9).all()
    assert allowed[traj.state_ids[traj.state_mask.bool()]].all()
    assert (~traj.is_action[traj.state_mask.bool()]).any(), "the tool never fired: test data too weak"
    with torch.no_grad():
        log_pf, log_pterm = policy_log_probs(lm.model, traj, allowed, lm.eos_id)
    m = traj.action_mask()
    torch.testing.assert_close(log_pf[m], traj.log_pf[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(log_pterm, traj.log_pterm, atol=1e-4, rtol=1e-4)
    forced = ~traj.stopped
    assert (traj.lengths[forced] == 9).all()
    assert (traj.log_pterm[forced, traj.lengths[forced]] == 0).all()


def test_greedy_is_argmax_and_deterministic(tiny):
    cfg = SamplingConfig(greedy=True, max_len=6)
    a = sample(tiny.model, tiny.tokenizer, ["the dog"], 3, cfg, stop_id=tiny.eos_id)
    b = sample(tiny.model, tiny.tokenizer, ["the dog"], 1, cfg, stop_id=tiny.eos_id)
    assert a.texts == b.texts * 3
    # explicit argmax decoding
    ids = tiny.tokenizer("the dog", add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(int(b.lengths[0])):
        logits = tiny.model(torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
    assert b.state_ids[0, : len(out)].tolist() == out


def test_same_seed_same_samples(tiny):
    cfg = SamplingConfig(max_len=8)
    run = lambda: sample(tiny.model, tiny.tokenizer, ["a", "the cat sat"], 4, cfg, stop_id=tiny.eos_id,  # noqa
                         generator=torch.Generator().manual_seed(3)).texts
    assert run() == run()


def test_prompt_longer_than_context_is_rejected(tiny):
    with pytest.raises(PromptTooLong, match="context"):
        sample(tiny.model, tiny.tokenizer, ["the " * 600], 1, SamplingConfig(max_len=4), stop_id=tiny.eos_id,
               context=512)


def test_bad_sampling_config():
    with pytest.raises(ValueError):
        SamplingConfig(min_len=5, max_len=3)
    with pytest.raises(ValueError):
        SamplingConfig(temperature=0)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt2"])
def test_every_prefix_reward_equals_explicit_forward(fixture, request):
    lm = request.getfixturevalue(fixture)
    tok, model = lm.tokenizer, lm.model
    traj = sample(model, tok, ["Question: 3 - 1 = ? Answer:"], 4, SamplingConfig(max_len=7),
                  stop_id=lm.eos_id, allowed=digit_mask(tok), tool=_add_tool,
                  generator=torch.Generator().manual_seed(1))
    contexts = ["Q: 1 + 1 = ? A: 2.\nQuestion: 3 - 1 = ? Answer:", "x Question: 3 - 1 = ? Answer:"] * 2
    suffixes = [". The answer is 2.", ". The answer is 12."] * 2
    ctx_ids, ctx_mask = left_pad([tok(c, add_special_tokens=False)["input_ids"] for c in contexts], tok.pad_token_id)
    suffix_ids = [tok(s, add_special_tokens=False)["input_ids"] for s in suffixes]
    with torch.no_grad():
        got = every_prefix_log_reward(model, ctx_ids, ctx_mask, traj, suffix_ids)
    ends = traj.state_ends()
    for b in range(len(traj)):
        ctx = tok(contexts[b], add_special_tokens=False)["input_ids"]
        state = traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist()
        for j in range(int(traj.lengths[b]) + 1):
            seq = ctx + state[: int(ends[b, j])] + suffix_ids[b]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
            want = sum(float(lp[i - 1, seq[i]]) for i in range(len(ctx), len(seq)))
            assert abs(float(got[b, j]) - want) < 1e-3, (b, j, float(got[b, j]), want)


def test_state_token_log_probs_match_forward(tiny):
    tok = tiny.tokenizer
    traj = sample(tiny.model, tok, ["the cat"], 2, SamplingConfig(max_len=5), stop_id=tiny.eos_id,
                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp = state_token_log_probs(tiny.model, traj)
        for b in range(2):
            ids = tok("the cat", add_special_tokens=False)["input_ids"]
            st = traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist()
            full = torch.log_softmax(tiny.model(torch.tensor([ids + st])).logits[0], -1)
            want = sum(float(full[len(ids) + i - 1, t]) for i, t in enumerate(st))
            assert abs(float(lp[b].sum()) - want) < 1e-4


@pytest.mark.parametrize("fixture", ["tiny", "tiny_gpt2"])
def test_shared_context_reward_equals_per_row_context(fixture, request):
    """A GFlowNet batch shares one context: the cached-context path must give the same rewards."""
    lm = request.getfixturevalue(fixture)
    tok, model = lm.tokenizer, lm.model
    traj = sample(model, tok, ["Question: 3 - 1 = ? Answer:"], 4, SamplingConfig(max_len=7),
                  stop_id=lm.eos_id, allowed=digit_mask(tok), tool=_add_tool,
                  generator=torch.Generator().manual_seed(2))
    ctx = "Q: 1 + 1 = ? A: 2.\\nQuestion: 3 - 1 = ? Answer:"
    ctx_ids, ctx_mask = left_pad([tok(ctx, add_special_tokens=False)["input_ids"]] * 4, tok.pad_token_id)
    suffix_ids = [tok(". The answer is 2.", add_special_tokens=False)["input_ids"]] * 4
    with torch.no_grad():
        shared = every_prefix_log_reward(model, ctx_ids, ctx_mask, traj, suffix_ids)
        one_row = torch.cat([every_prefix_log_reward(model, ctx_ids[:1], ctx_mask[:1], traj.select([b]),
                                                     suffix_ids[:1]) for b in range(4)])
    L = shared.shape[1]
    torch.testing.assert_close(shared, torch.cat([one_row, torch.zeros(4, L - one_row.shape[1])], 1)[:, :L],
                               atol=1e-4, rtol=1e-4)


def test_draw_index_follows_the_probabilities_and_never_draws_a_zero():
    """Inverse-CDF drawing against the exact distribution: 40,000 draws of [0, .2, 0, .5, .3, 0] (unnormalised x3,
    zeros at both ends and between) land within 4 standard errors of each probability, never on a zero; a row
    with all mass on its last column draws it every time (the CDF's round-up guard)."""
    from gfnbench.sampling import draw_index

    p = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    n = 40_000
    probs = torch.stack([p * 3] * n)
    idx = draw_index(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(idx, minlength=6).double() / n
    assert freq[p == 0].sum() == 0
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert ((freq - p.double()).abs() <= 4 * se + 1e-12).all(), freq
    last = torch.zeros(5, 7)
    last[:, 6] = 1e-30
    assert (draw_index(last, torch.Generator().manual_seed(1)) == 6).all()
    # u * total rounding up to the total: the search runs past the end and the guard returns the last column with
    # mass, not a zero column after it; u = 0 returns the first column with mass
    from gfnbench.sampling import inverse_cdf

    rows = torch.tensor([[0.0, 0.2, 0.3, 0.0, 0.0], [0.4, 0.0, 0.0, 0.0, 0.6]])
    assert inverse_cdf(rows, torch.ones(2, 1, dtype=torch.float64)).tolist() == [2, 4]
    assert inverse_cdf(rows, torch.zeros(2, 1, dtype=torch.float64)).tolist() == [1, 0]
    # seeded: the same generator state gives the same draws
    a = draw_index(probs[:100], torch.Generator().manual_seed(7))
    b = draw_index(probs[:100], torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_greedy_evaluation_fills_batches_with_more_questions_and_draws_the_same():
    """Greedy returns one row a question, so evaluation gives it eval_batch x n questions a batch (the rows a
    sampling method's batch has); its samples and metrics do not depend on the batch. A sampling method keeps
    eval_batch questions (and each batch's seeded stream)."""
    from dataclasses import replace

    from gfnbench.catalog import get_method
    from gfnbench.evaluation import evaluate, questions_per_batch
    from gfnbench.methods import RunContext
    from gfnbench.models import load_model
    from gfnbench.profiles import get_profile
    from gfnbench.tasks import get_task

    task, lm = get_task("arith"), load_model("tiny")
    prof = replace(get_profile("smoke"), eval_questions=5, eval_samples=2, eval_batch=1)
    greedy = get_method("greedy").factory(task, lm, RunContext(seed=0, profile=prof, method="greedy"))
    temperature = get_method("temperature").factory(task, lm, RunContext(seed=0, profile=prof, method="temperature"))
    assert questions_per_batch(greedy, prof, 2) == 2 and questions_per_batch(temperature, prof, 2) == 1
    wide, wide_samples, _ = evaluate(greedy, task, prof, 0)
    one_row = replace(prof, eval_samples=1)            # one question a batch for greedy too
    assert questions_per_batch(greedy, one_row, 1) == 1
    narrow, narrow_samples, _ = evaluate(greedy, task, one_row, 0)
    assert [s["text"] for s in wide_samples] == [s["text"] for s in narrow_samples]
    assert wide.keys() == narrow.keys()
    for split in wide:       # the likelihood is summed in other pass shapes: equal to float rounding
        assert wide[split] == pytest.approx(narrow[split], rel=1e-6)
