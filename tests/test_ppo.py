"""PPO: zero KL before any update, reward goes up on a toy task with a known optimum, GAE by hand, reproducible."""
import math

import pytest
import torch

from gfnbench.baselines.ppo import KLController, PPOConfig, PPOModule, action_forward, action_mask, fit_ppo, gae
from gfnbench.catalog import get_method
from gfnbench.methods import RunContext
from gfnbench.models import build_tiny
from gfnbench.profiles import PROFILES
from gfnbench.tasks import get_task
from gfnbench.tasks.rng import RandomInteger

SMOKE = PROFILES["smoke"]


class BestDigit(RandomInteger):
    """One digit then a forced stop; log R = 0 for "7", -5 for any other digit: the optimum is known."""

    name = "best_digit"
    best = "7"

    def __init__(self):
        super().__init__(low=0, high=9, max_len=1, leading_zeros=True)

    def log_target(self, value):
        return 0.0 if str(value) == self.best else -5.0


def module_for(task, seed=0, **kw):
    lm = build_tiny("llama")
    cfg = PPOConfig(**{"lr": 1e-2, "samples_per_prompt": 16, "lora_rank": 8, "lora_alpha": 16,
                       "lora_targets": "all-linear", **kw})
    return lm, PPOModule(task, lm, cfg, task.examples("train"), seed=seed)


def test_kl_to_the_base_model_is_exactly_zero_before_any_update_and_is_logged(tmp_path):
    import pandas as pd

    task = get_task("rng")
    _, module = module_for(task)
    fit_ppo(module, RunContext(seed=0, profile=SMOKE, log_dir=tmp_path), iterations=2)
    first, second = module.curve
    assert first["kl"] == 0.0 and first["kl_coef"] == 0.2
    assert second["kl"] != 0.0                                   # the first update moved the policy
    assert second["kl_coef"] == pytest.approx(0.2 * (1 - 0.2 * 16 / 10000))   # KL 0 < target: the error is -0.2
    logged = pd.read_csv(tmp_path / "metrics.csv")
    assert logged["train/kl"].dropna().iloc[0] == 0.0
    for key in ("reward", "kl_coef", "entropy", "clip_frac", "value_loss", "policy_loss", "approx_kl"):
        assert logged[f"train/{key}"].notna().any(), key


def exact_best_probability(task, module, tokenizer) -> float:
    module.policy.eval()
    dist = task.exact_distribution(module.policy, tokenizer, task.prompt(task.examples("test")[0]))
    return dist.get(task.best, 0.0)


def test_ppo_raises_the_probability_of_the_best_answer():
    task = BestDigit()
    lm, module = module_for(task, lr=3e-3, samples_per_prompt=32, min_log_reward=-5.0)
    before = exact_best_probability(task, module, lm.tokenizer)
    fit_ppo(module, RunContext(seed=0, profile=SMOKE), iterations=15)
    after = exact_best_probability(task, module, lm.tokenizer)
    assert before < 0.2, before
    assert after > 0.8, (before, after)
    rewards = [p["reward"] for p in module.curve]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5


def test_same_seed_same_numbers():
    task = get_task("rng")
    curves = []
    for _ in range(2):
        _, module = module_for(task, seed=5)
        fit_ppo(module, RunContext(seed=5, profile=SMOKE), iterations=3)
        curves.append(module.curve)
    assert curves[0] == curves[1]
    assert all(math.isfinite(v) for p in curves[0] for v in p.values())


def test_gae_on_a_hand_worked_example():
    """gamma 0.9, lambda 0.8; row 2 has 2 actions (its 3rd slot is padding and must not leak in).

    Row 1: delta_2 = 2 + 0 - (-1) = 3, A_2 = 3; delta_1 = 0 + 0.9(-1) - 1 = -1.9, A_1 = -1.9 + 0.72 * 3 = 0.26;
    delta_0 = 1 + 0.9 * 1 - 0.5 = 1.4, A_0 = 1.4 + 0.72 * 0.26 = 1.5872. Returns = A + V.
    Row 2: delta_1 = 2 + 0 - 1 = 1, A_1 = 1; A_0 = 1.4 + 0.72 * 1 = 2.12.
    """
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 1.0, -1.0], [0.5, 1.0, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(adv, torch.tensor([[1.5872, 0.26, 3.0], [2.12, 1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[2.0872, 1.26, 2.0], [2.62, 2.0, 0.0]]))
    # gamma = lambda = 1 (the PPO default gamma with lambda 1): the advantage is reward-to-go minus V
    adv1, _ = gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=1.0)
    assert torch.allclose(adv1, torch.tensor([[3.0 - 0.5, 2.0 - 1.0, 2.0 + 1.0]]))


def test_adaptive_kl_controller():
    ctl = KLController(0.2, target=0.1, horizon=10000)
    ctl.update(1.0, 100)                   # far above target: the error is clipped at +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 100 / 10000))
    ctl.update(0.09, 100)                  # 10% below target
    assert ctl.value == pytest.approx(0.2 * 1.002 * (1 - 0.1 * 100 / 10000))
    fixed = KLController(0.2, 0.1, 10000, adaptive=False)
    fixed.update(5.0, 100)
    assert fixed.value == 0.2


def test_action_log_probs_match_the_teacher_forced_policy_with_tool_tokens():
    """On a gold arith trajectory (calculator tokens in the state), actions are the tokens plus the stop; the
    log-probs equal gflownet's policy_log_probs, except that the stop is renormalised away before min_len."""
    from gfnbench.policy import gold_trajectory, trajectories_from_states
    from gfnbench.sampling import encode, policy_log_probs

    task = get_task("arith")
    lm = build_tiny("llama")
    tok = lm.tokenizer
    ex = task.examples("train")[0]
    tokens, acts = gold_trajectory(task, tok, task.target(ex))
    assert not all(acts)                                         # tool outputs are in the state
    traj = trajectories_from_states(task.prompt(ex), encode(tok, [task.prompt(ex)])[0], [(tokens, acts, True)], tok)
    allowed, stop = task.allowed_tokens(tok), task.stop_id(tok)
    with torch.no_grad():
        log_pf, log_pterm = policy_log_probs(lm.model, traj, allowed, stop)
        free = action_forward(lm.model, traj, allowed, stop, min_len=0)
        blocked = action_forward(lm.model, traj, allowed, stop, min_len=task.min_len, hidden=True)
    n = int(traj.lengths[0])
    assert action_mask(traj)[0].tolist() == [True] * (n + 1)
    assert torch.allclose(free.logp[0, :n], log_pf[0], atol=1e-5)
    assert free.logp[0, n] == pytest.approx(float(log_pterm[0, n]), abs=1e-5)
    k = task.min_len
    renormalised = log_pf[0, :k] - torch.log1p(-log_pterm[0, :k].exp())
    assert torch.allclose(blocked.logp[0, :k], renormalised, atol=1e-5)
    assert torch.allclose(blocked.logp[0, k:], free.logp[0, k:], atol=1e-6)
    assert blocked.hidden.shape == (1, n + 1, lm.model.config.hidden_size)


def test_ppo_is_registered_for_every_task_and_runs_through_the_harness(tmp_path):
    import json

    from gfnbench.runner import run

    spec = get_method("ppo")
    assert spec.trains and all(spec.applies_to(t) for t in ("arith", "rng", "rng_peaked"))  # every task
    out = run("rng", "ppo", 0, profile="smoke", results_dir=str(tmp_path))
    record = json.loads((out / "record.json").read_text())
    steps = round(SMOKE.train_steps * get_task("rng").training.steps_multiplier)
    assert [p["step"] for p in record["train_curve"]] == list(range(steps))
    assert record["config"]["method"]["iterations"] == steps
    assert (out / "train" / "metrics.csv").is_file()


def test_settings_override_iterations_and_are_recorded_typed(tmp_path):
    import json

    from gfnbench.runner import run

    out = run("rng", "ppo", 0, profile="smoke", results_dir=str(tmp_path),
              settings={"ppo": {"iterations": "2", "ppo_epochs": 1}})
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["method"]["iterations"] == 2 and len(record["train_curve"]) == 2
    assert record["settings"] == {"iterations": 2, "ppo_epochs": 1}
    assert {k: record["budget"][k] for k in ("reward_evaluations", "optimizer_steps", "summary", "reward_calls")} == \
        {"reward_evaluations": 2 * SMOKE.samples_per_prompt, "optimizer_steps": 2,
         "reward_calls": 2 * SMOKE.samples_per_prompt,     # PPO has no replay: every planned draw is scored
         "summary": f"2 iterations x {SMOKE.samples_per_prompt} samples, 1 PPO epochs each"}
    assert record["config"]["method"]["ppo"]["ppo_epochs"] == 1
