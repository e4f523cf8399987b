"""GFlowNet fine-tuning samples in proportion to the reward: checked exactly on an enumerable toy task."""
import re

import pytest
import torch

from gfnbench.gflownet import GFlowNetConfig, GFlowNetModule, fit_module
from gfnbench.methods import RunContext
from gfnbench.models import build_tiny
from gfnbench.policy import gold_trajectory
from gfnbench.profiles import PROFILES
from gfnbench.tasks import get_task
from gfnbench.tasks.rng import RandomInteger


class DigitStrings(RandomInteger):
    """Outcomes: every string of 1-2 digits from 0-3 (20 strings, each spelled one way by the single-digit
    tokens); log R = -|int - 12| / 4, so the target has a shape, not just a support."""

    name = "digit_strings"
    digits = "0123"

    def __init__(self):
        super().__init__(max_len=2)

    def allowed_tokens(self, tokenizer):
        mask = torch.zeros(len(tokenizer), dtype=torch.bool)
        for d in self.digits:
            mask[tokenizer.convert_tokens_to_ids(d)] = True
        mask[self.stop_id(tokenizer)] = True
        return mask

    def parse(self, text):
        return text if re.fullmatch(f"[{self.digits}]{{1,2}}", text) else None

    def outcomes(self):
        return list(self.digits) + [a + b for a in self.digits for b in self.digits]

    def log_target(self, value):
        return -abs(int(value) - 12) / 4


# subtb at 200 steps reached TV 0.073 (seed 0) and 0.010 (seed 1): 300 steps for both losses
@pytest.mark.parametrize("loss, steps", [("subtb", 300), ("tb", 300)])
def test_gflownet_matches_an_enumerable_target(loss, steps):
    torch.manual_seed(0)
    task = DigitStrings()
    lm = build_tiny("llama")
    cfg = GFlowNetConfig(loss=loss, lr=1e-2, logz_lr=0.1, warmup_steps=5, samples_per_prompt=32,
                         behaviour_mix=(0.5, 0.5, 0.0), lora_rank=16, lora_alpha=32, lora_targets="all-linear",
                         buffer_sampling="uniform")
    module = GFlowNetModule(task, lm, cfg, task.examples("train"), seed=0)
    prompt = task.prompt(task.examples("test")[0])
    before = task.exact_metrics(module.policy, lm.tokenizer, prompt)["tv_exact"]
    fit_module(module, RunContext(seed=0, profile=PROFILES["smoke"]), accumulate=1, steps=steps)
    after = task.exact_metrics(module.policy, lm.tokenizer, prompt)["tv_exact"]
    assert before > 0.3, before
    # From TV ~0.80 before training. TB measured after the log Z head and penalty changes: 0.071 (Huber, default)
    # and 0.056 (r^2) at 300 steps. SubTB: < 0.05 on an Intel AMX host, 0.0528 on an AMD EPYC host (the same seed;
    # float kernels differ). One bound for both, well below the start.
    assert after < 0.08, (before, after)


@pytest.mark.parametrize("name, stop", [("rng", "."), ("rng_eos", None)])
def test_exact_distribution_sums_to_one_and_matches_sampling(tiny, name, stop):
    """Under either stop action: rng stops on the "." token (never part of the text), rng_eos on eos."""
    from collections import Counter

    from gfnbench.sampling import sample

    task = get_task(name)
    stop_id = tiny.tokenizer.convert_tokens_to_ids(stop) if stop else tiny.tokenizer.eos_token_id
    assert task.stop_id(tiny.tokenizer) == stop_id and task.config()["stop"] == (stop or "eos")
    prompt = task.prompt(task.examples("test")[0])
    dist = task.exact_distribution(tiny.model, tiny.tokenizer, prompt)
    assert abs(sum(dist.values()) - 1) < 1e-5
    traj = sample(tiny.model, tiny.tokenizer, [prompt], 3000, task.sampling(train=False),
                  stop_id=task.stop_id(tiny.tokenizer), allowed=task.allowed_tokens(tiny.tokenizer),
                  generator=torch.Generator().manual_seed(0))
    counts = Counter(traj.texts)
    assert not any("." in text for text in traj.texts) and traj.stopped.any()
    for text, p in sorted(dist.items(), key=lambda kv: -kv[1])[:5]:
        assert abs(counts[text] / 3000 - p) < 4 * (p * (1 - p) / 3000) ** 0.5 + 1e-3


def test_rng_reward_per_prefix(tiny):
    from gfnbench.trajectories import from_rows

    task = get_task("rng")
    tok = tiny.tokenizer
    digits = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    states = [digits("4") + digits("2"), digits("1") + digits("0") + digits("0"), digits("0") + digits("7")]
    traj = from_rows(["p"] * 3, [0] * 3, [[1]] * 3, states, [[True] * len(s) for s in states], [True] * 3,
                     [[0.0] * len(s) for s in states], [[0.0] * (len(s) + 1) for s in states], ["", "", ""], 0)
    r = task.log_reward(None, tok, traj, task.examples("test"))
    inf = float("-inf")
    assert r[0, :3].tolist() == [inf, 0.0, 0.0]          # "", "4", "42"
    assert r[1, :4].tolist() == [inf, 0.0, 0.0, 0.0]     # "", "1", "10", "100"
    assert r[2, :3].tolist() == [inf, 0.0, inf]          # "", "0", "07" (leading zero: invalid)


def test_gold_trajectory_splits_actions_and_tool_outputs(tiny):
    task = get_task("arith")
    tokens, is_action = gold_trajectory(task, tiny.tokenizer, " 7 + 9 = 16, 16 + 3 = 19")
    assert tiny.tokenizer.decode(tokens) == " 7 + 9 = 16, 16 + 3 = 19"
    tool_text = tiny.tokenizer.decode([t for t, a in zip(tokens, is_action) if not a])
    assert tool_text == " 16 19"


def test_nan_reward_is_rejected_with_task_and_step(tiny):
    class NaNTask(RandomInteger):
        name = "nan_task"

        def log_reward(self, model, tokenizer, traj, examples):
            out = super().log_reward(model, tokenizer, traj, examples)
            out[0, -1] = float("nan")
            return out

    lm = build_tiny("llama")
    task = NaNTask(max_len=2)
    module = GFlowNetModule(task, lm, GFlowNetConfig(samples_per_prompt=4, behaviour_mix=(1.0, 0.0, 0.0)),
                            task.examples("train"))
    with pytest.raises(ValueError, match="task nan_task, step 0"):
        module.draw(task.examples("train")[0])


class NoLeadingZero(DigitStrings):
    """The same strings with uniform target, but "00".."03" are invalid (zero reward, floored at -99 in the
    loss), as "05" or "555" are on rng: 16 valid outcomes, 4 invalid ones that every untrained policy visits."""

    name = "no_leading_zero"

    def parse(self, text):
        return text if re.fullmatch(r"[0-3]|[1-3][0-3]", text) else None

    def outcomes(self):
        return [o for o in super().outcomes() if self.parse(o)]

    def log_target(self, value):
        return 0.0


def train_tv(task, steps: int, seed: int = 0, **overrides) -> tuple[float, float]:
    torch.manual_seed(0)
    lm = build_tiny("llama")
    settings = dict(loss="subtb", lr=1e-2, warmup_steps=5, samples_per_prompt=32, behaviour_mix=(0.5, 0.5, 0.0),
                    lora_rank=16, lora_alpha=32, lora_targets="all-linear", buffer_sampling="uniform")
    module = GFlowNetModule(task, lm, GFlowNetConfig(**{**settings, **overrides}), task.examples("train"),
                            seed=seed)
    prompt = task.prompt(task.examples("test")[0])
    before = task.exact_metrics(module.policy, lm.tokenizer, prompt)["tv_exact"]
    fit_module(module, RunContext(seed=seed, profile=PROFILES["smoke"]), accumulate=1, steps=steps)
    return before, task.exact_metrics(module.policy, lm.tokenizer, prompt)["tv_exact"]


def test_zero_reward_states_do_not_stall_the_shape():
    """The failure found on rng with SmolLM2: squared residuals of ~99 at floored (invalid) states fill Adam's
    second moment, and the O(1) residuals that shape the distribution then barely move the policy. With the
    default (Huber-bounded) penalty the tiny model gets near the target; with the paper's squared penalty it
    stalls on a subset of the answers. Measured at 300 steps, seeds 0/1/2: Huber 0.010/0.115/0.001, squared
    0.455/0.313/0.063 (at 150 steps seed 1 was still 0.107 with Huber: one seed is not a test)."""
    task = NoLeadingZero()
    runs = [(train_tv(task, 300, seed=seed), train_tv(task, 300, seed=seed, huber_delta=None)[1]) for seed in (0, 1, 2)]
    assert all(before > 0.3 for (before, _), _ in runs), runs
    assert sorted(after for (_, after), _ in runs)[1] < 0.05, runs            # the median seed reaches the target
    assert all(squared > after for (_, after), squared in runs), runs          # and every seed beats r^2


def test_rng_distances_against_independent_formulas():
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import entropy

    from gfnbench.tasks.rng import distances

    policy, invalid, target = {0: 0.5, 1: 0.3}, 0.2, {0: 0.5, 1: 0.5}
    d = distances(policy, invalid, target)
    p, t = [0.5, 0.3, 0.2], [0.5, 0.5, 0.0]
    assert d["tv"] == pytest.approx(0.2)                                    # (0 + .2 + .2) / 2
    assert d["kl_target_policy"] == pytest.approx(entropy(t, p))
    assert d["kl_policy_target"] == float("inf")                           # invalid mass, zero target mass
    assert d["kl_valid"] == pytest.approx(entropy([0.625, 0.375], [0.5, 0.5]))
    assert d["js"] == pytest.approx(jensenshannon(p, t) ** 2)
    clean = distances({0: 0.25, 1: 0.75}, 0.0, target)
    assert clean["kl_policy_target"] == pytest.approx(entropy([0.25, 0.75], [0.5, 0.5]))


def test_log_z_head_steps_do_not_scale_with_the_hidden_size():
    """The bug found on rng: Adam moves each weight by ~lr, so a linear log Z head on raw features moved by
    lr * ||h||_1 per step (SmolLM2: ||h||_1 = 587, a jump of ~6 at lr 1e-2)."""
    from gfnbench.gflownet import LogZHead

    for width, scale in [(64, 1.0), (576, 50.0)]:
        head = LogZHead(width)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        features = scale * torch.randn(1, width)
        before = float(head(features))
        (-head(features)).sum().backward()
        opt.step()
        assert 0 < float(head(features)) - before <= 2 * 1e-2 + 1e-6
