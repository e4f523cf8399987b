"""SFT imitates the gold rationales (NLL falls), keeps the best-by-val adapter, and is reproducible."""
import math

import pytest
import torch

from gfnbench.baselines.sft import SFTConfig, SFTMethod, SFTModule, collate, fit_sft, gold_sequences
from gfnbench.catalog import get_method
from gfnbench.methods import RunContext
from gfnbench.models import build_tiny
from gfnbench.profiles import PROFILES
from gfnbench.tasks import get_task


def plain_nll(model, tokenizer, items) -> float:
    """Token-mean NLL of the gold targets, by an explicit full forward pass (independent of token_nll)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for it in items:
            ids = torch.tensor([it.prompt_ids + it.target_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            P = len(it.prompt_ids)
            for i, tok in enumerate(it.target_ids):
                total -= float(logp[P + i - 1, tok])
                count += 1
    return total / count


def make(task, seed=0, **kw):
    lm = build_tiny("llama")
    cfg = SFTConfig(**{"lr": 1e-2, "warmup_steps": 2, "batch_size": 10, "val_every": 5, "patience": 10,
                       "lora_rank": 8, "lora_alpha": 16, "lora_targets": "all-linear", **kw})
    train = gold_sequences(task, lm.tokenizer, task.examples("train"))
    val = gold_sequences(task, lm.tokenizer, task.examples("val"))[:10]
    return lm, SFTModule(task, lm, cfg, train, val, seed=seed), train


def test_gold_sequences_are_the_labelled_rationales_then_stop():
    task = get_task("arith")
    lm = build_tiny("llama")
    items = gold_sequences(task, lm.tokenizer, task.examples("train"))
    labelled = [e for e in task.examples("train") if e.rationale]
    assert len(items) == len(labelled) == 10
    first = items[0]
    assert lm.tokenizer.decode(first.target_ids[:-1]) == task.target(labelled[0])    # tool outputs included
    assert first.target_ids[-1] == lm.tokenizer.eos_token_id and first.weights[-1] == 1.0
    assert lm.tokenizer.decode(first.prompt_ids) == task.prompt(labelled[0])
    # validation targets come from the val rationales
    assert len(gold_sequences(task, lm.tokenizer, task.examples("val"))) == len(task.examples("val"))
    # padding never enters the loss
    batch = collate(items[:3], lm.tokenizer.pad_token_id)
    assert batch["weights"].sum() == sum(len(i.target_ids) for i in items[:3])


def test_sft_lowers_the_nll_of_its_targets():
    task = get_task("arith")
    lm, module, train = make(task)
    before = plain_nll(module.policy, lm.tokenizer, train)
    fit_sft(module, RunContext(seed=0, profile=PROFILES["smoke"]), steps=30)
    after = plain_nll(module.policy, lm.tokenizer, train)
    assert after < before - 0.5, (before, after)
    assert [p["step"] for p in module.curve] == list(range(30))
    assert module.val_curve[0]["step"] == 0 and len(module.val_curve) == 7     # steps 0, 5, ..., 30
    assert module.best_nll == min(v["val_nll"] for v in module.val_curve)


def test_best_val_weights_are_restored():
    """After training, the adapter is the snapshot with the lowest val NLL, which need not be the last one."""
    from gfnbench.baselines.sft import token_nll

    task = get_task("arith")
    _, module, _ = make(task)
    fit_sft(module, RunContext(seed=0, profile=PROFILES["smoke"]), steps=20)
    state = {n: p for n, p in module.policy.named_parameters() if p.requires_grad}
    assert module.best_state is not None and set(state) == set(module.best_state)
    assert all(torch.equal(state[n], module.best_state[n]) for n in state)
    module.policy.eval()
    with torch.no_grad():
        batch = collate(module.val_items, module.tokenizer.pad_token_id)
        nll, w = token_nll(module.policy, batch, module.allowed, module.stop_id)
    assert float(nll[w > 0].mean()) == pytest.approx(module.best_nll, abs=1e-5)
    assert module.best_nll < module.val_curve[0]["val_nll"]
    assert module.best_step < module.val_curve[-1]["step"]          # the tiny model over-fits 10 rationales


def test_early_stopping_on_val_nll():
    task = get_task("arith")
    _, module, _ = make(task, patience=2)
    fit_sft(module, RunContext(seed=0, profile=PROFILES["smoke"]), steps=60)
    assert len(module.curve) < 60
    last_best = max(v["step"] for v in module.val_curve if v["val_nll"] == module.best_nll)
    assert module.val_curve[-1]["step"] == last_best + 2 * 5          # 2 validations without improvement


def test_same_seed_same_numbers():
    task = get_task("arith")
    runs = []
    for _ in range(2):
        _, module, _ = make(task, seed=3)
        fit_sft(module, RunContext(seed=3, profile=PROFILES["smoke"]), steps=6)
        runs.append(([p["loss"] for p in module.curve], [v["val_nll"] for v in module.val_curve]))
    assert runs[0] == runs[1]
    assert all(math.isfinite(x) for x in runs[0][0])


def test_sft_method_is_registered_for_tasks_with_targets_and_runs_through_the_harness(tmp_path):
    import json

    from gfnbench.runner import run

    spec = get_method("sft")
    assert spec.trains and all(spec.applies_to(t) for t in ("arith", "rng", "rng_peaked"))
    out = run("arith", "sft", 0, profile="smoke", results_dir=str(tmp_path))
    record = json.loads((out / "record.json").read_text())
    assert record["train_curve"] and "loss" in record["train_curve"][0]
    assert (out / "train" / "metrics.csv").is_file()
    assert record["config"]["method"]["sft"]["lr"] == pytest.approx(PROFILES["smoke"].learning_rate * 10)


def test_rng_gold_targets_are_seeded_draws_from_the_target():
    from collections import Counter

    task = get_task("rng_peaked")
    train, val = task.examples("train"), task.examples("val")
    assert len(train) == task.gold_samples and len(val) == task.gold_samples // 2
    assert [e.answer for e in train] == [e.answer for e in get_task("rng_peaked").examples("train")]
    assert [e.answer for e in train] != [e.answer for e in val][: len(train)]
    assert all(task.target(e) == e.answer and task.parse(e.answer) is not None for e in train + val)
    assert task.examples("test")[0].answer == "" and task.target(task.examples("test")[0]) is None
    # many draws follow the target: the mode 30 is drawn about p(30) = 0.0512 of the time
    draws = Counter(task.target_samples(20000, seed=3))
    assert abs(draws[30] / 20000 - task.target_distribution()[30]) < 0.006


def test_a_task_without_targets_is_refused():
    from gfnbench.tasks.rng import UniformInteger

    class NoGold(UniformInteger):
        gold_samples = 0

    task = NoGold()
    lm = build_tiny("llama")
    with pytest.raises(ValueError, match="nothing to imitate"):
        SFTMethod(task, lm, RunContext(seed=0, profile=PROFILES["smoke"]))


def test_sft_settings_on_a_label_task_pass_the_check_and_are_used():
    """The sft row takes SFTConfig on every task, so a setting the check accepts on subj is one its label
    classifier uses (weight decay: 0.01 by default, AdamW's own, so default runs are unchanged)."""
    from pathlib import Path

    from gfnbench.baselines.sft import LabelSFTMethod
    from gfnbench.catalog import get_method
    from gfnbench.tasks.subj import Subjectivity

    spec = get_method("sft")
    task = Subjectivity(data=str(Path(__file__).parent / "fixtures" / "subj"))
    for given, want in (({"weight_decay": "0.1"}, 0.1), ({}, 0.01)):
        ctx = RunContext(seed=0, profile=PROFILES["smoke"], settings=spec.check_settings(given), method="sft")
        impl = spec.factory(task, build_tiny("llama"), ctx)
        assert isinstance(impl, LabelSFTMethod)
        optimizer = impl.trained_module().configure_optimizers()["optimizer"]
        assert [g["weight_decay"] for g in optimizer.param_groups] == [want]
