"""What a method spends is counted, not planned: reward calls (fresh draws and buffer seeds, never replays), kept
across a resume, and the distinct labelled examples each row reads (gold targets, val gold, seeds, shots)."""
from __future__ import annotations

import itertools

import torch
from torch.utils.data import DataLoader

from gfnbench.catalog import get_method
from gfnbench.gflownet import GFlowNetConfig, GFlowNetModule, fit_module
from gfnbench.methods import Budget, RunContext, labelled_counts
from gfnbench.models import build_tiny
from gfnbench.profiles import PROFILES
from gfnbench.spending import distinct_draws
from gfnbench.tasks import get_task
from gfnbench.tasks.rng import RandomInteger

SMOKE = PROFILES["smoke"]
SEEDS_PER_EXAMPLE = 2


class SeededDigits(RandomInteger):
    """One digit 0..9; 4 training examples with a gold answer each, and two extra buffer seeds per example."""

    name = "seeded_digits"
    gold_samples = 4

    def __init__(self):
        super().__init__(low=0, high=9, max_len=2)

    def buffer_seeds(self, model, tokenizer, ex, generator=None):
        return ["3", "5"][:SEEDS_PER_EXAMPLE]


def replayless_steps(curve: list[dict]) -> int:
    """Steps whose batch was drawn fresh (a replay step with nothing stored falls back and says so)."""
    return sum(point["behaviour"] != "replay" for point in curve)


def gflownet_module(task, seed: int = 0) -> GFlowNetModule:
    cfg = GFlowNetConfig(samples_per_prompt=3, behaviour_mix=(0.2, 0.2, 0.6), lora_rank=4, lora_alpha=8)
    return GFlowNetModule(task, build_tiny("llama"), cfg, task.examples("train"), seed=seed)


def test_gflownet_counts_fresh_draws_and_seeds_never_replays():
    task = SeededDigits()
    module = gflownet_module(task)
    fit_module(module, RunContext(seed=0, profile=SMOKE), accumulate=1, steps=10)
    replays = len(module.curve) - replayless_steps(module.curve)
    assert replays > 0, "the test needs replay steps to mean anything"
    seeded = 4 * (1 + SEEDS_PER_EXAMPLE)        # 4 examples x (gold answer + 2 seeds), each scored once
    assert module.reward_tally().calls == replayless_steps(module.curve) * 3 + seeded
    assert module.spent_by_process()[0]["calls"] == module.reward_tally().calls
    assert len(module.seeded_examples) == 4


def test_gflownet_row_budget_has_its_counts_and_seeded_labels():
    task = SeededDigits()
    ctx = RunContext(seed=0, profile=SMOKE, settings={"behaviour_mix": [0.2, 0.2, 0.6], "samples_per_prompt": 3})
    method = get_method("gflownet").factory(task, build_tiny("llama"), ctx)
    method.fit()
    budget = method.spending()
    steps = round(SMOKE.train_steps * task.training.steps_multiplier)
    assert (budget.reward_evaluations, budget.optimizer_steps) == (steps * 3, steps)      # the plan, as before
    assert budget.reward_calls == replayless_steps(method.module.curve) * 3 + 4 * 3
    assert replayless_steps(method.module.curve) < steps                                  # replays called nothing
    assert (budget.test_reward_calls, budget.labelled_items, budget.labelled_detail) == (0, 4, {"seeded": 4})


def test_resume_keeps_the_reward_count(tmp_path):
    task = SeededDigits()
    first = gflownet_module(task)
    ctx = RunContext(seed=0, profile=SMOKE, checkpoint_dir=tmp_path, checkpoint_every=1)
    fit_module(first, ctx, accumulate=1, steps=4)
    resumed = gflownet_module(task, seed=1)     # another seed: only the checkpoint can give it the first 4 steps
    fit_module(resumed, RunContext(seed=0, profile=SMOKE, checkpoint_dir=tmp_path, checkpoint_every=1, resume=True),
               accumulate=1, steps=7)
    assert len(resumed.curve) == 7 and resumed.curve[:4] == first.curve
    assert resumed.reward_tally().calls == replayless_steps(resumed.curve) * 3 + 4 * 3
    assert {ex.id for ex in resumed.seeded_examples} == {ex.id for ex in task.examples("train")}


def test_sft_with_early_stopping_counts_train_and_val_gold():
    task = get_task("arith")
    method = get_method("sft").factory(task, build_tiny("llama"), RunContext(seed=0, profile=SMOKE))
    method.fit()
    budget = method.spending()
    # arith: 10 labelled rationales in train (smoke: 3 steps x 8 draws cover them), 50 gold val rationales
    assert budget.labelled_detail == {"train_gold": 10, "val_gold": 50} and budget.labelled_items == 60
    assert budget.reward_calls == 0 and budget.reward_evaluations == 0


def test_prompting_and_decoding_rows_count_their_demonstrations():
    arith, ctx = get_task("arith"), RunContext(seed=0, profile=SMOKE)
    few_shot = get_method("few_shot").factory(arith, None, ctx).spending()
    assert (few_shot.labelled_items, few_shot.labelled_detail) == (3, {"demonstrations": 3})
    assert (few_shot.reward_evaluations, few_shot.optimizer_steps, few_shot.reward_calls) == (0, 0, 0)
    assert few_shot.summary == "no training, 3 demonstrations"
    assert get_method("greedy").factory(arith, None, ctx).spending().labelled_items == 3   # arith's 3-shot prompt
    assert get_method("zero_shot").factory(arith, None, ctx).spending() is None            # it spends nothing
    assert get_method("temperature").factory(get_task("rng"), None, ctx).spending() is None


def test_distinct_draws_match_a_shuffled_loader():
    for n, batch, steps in [(10, 8, 1), (10, 8, 2), (10, 3, 2), (5, 8, 3), (7, 2, 9), (10, 8, 0)]:
        loader = DataLoader(list(range(n)), batch_size=min(batch, n), shuffle=True,
                            generator=torch.Generator().manual_seed(n + steps))
        drawn = itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), steps)
        seen = {int(i) for b in drawn for i in b}
        assert distinct_draws(n, steps, batch) == len(seen), (n, batch, steps)


def test_labelled_counts_are_distinct_over_uses():
    a, b, c = object(), object(), object()
    assert labelled_counts({"seeded": [a, b], "demonstrations": [a, a], "val_gold": []}) == \
        (2, {"seeded": 2, "demonstrations": 1})
    assert labelled_counts({"train_gold": [a], "val_gold": [b, c]}) == (3, {"train_gold": 1, "val_gold": 2})
    assert Budget(1, 1, "s").labelled_detail == {}
