"""subj's label-only rows (SFT on labels, GFlowNet + M-step) and the task-side method choices (opt-in, excluded,
costly): the label loss against explicit forward passes, training that lowers it, and harness runs."""
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gfnbench.catalog import get_method, methods_for
from gfnbench.label_classifier import LabelClassifierModule, LabelSFTConfig, fit_label_classifier, label_loss
from gfnbench.methods import RunContext
from gfnbench.models import build_tiny
from gfnbench.preflight import default_methods
from gfnbench.profiles import get_profile
from gfnbench.records import read_samples
from gfnbench.tasks.arith import Arithmetic
from gfnbench.tasks.continuation import Continuation
from gfnbench.tasks.subj import LABELS, Subjectivity

FIXTURE = Path(__file__).parent / "fixtures" / "subj"


def explicit_log_prob(model, tok, prompt: str, continuation: str) -> float:
    """log p(continuation | prompt): one unbatched forward pass over the concatenated token ids."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), -1)
    return sum(float(logp[len(p) + i - 1, c[i]]) for i in range(len(c)))


def test_label_loss_is_cross_entropy_over_explicit_label_log_likelihoods(tiny):
    tok, model = tiny.tokenizer, tiny.model
    prompts = ["The plot follows a man", "I loved this, it is"]
    labels = [", so it is objective.", ", so it is subjective."]
    gold = [0, 1]
    want = 0.0
    for prompt, g in zip(prompts, gold):
        scores = [explicit_log_prob(model, tok, prompt, lab) for lab in labels]
        want += -(scores[g] - math.log(sum(math.exp(s) for s in scores)))
    with torch.no_grad():
        got = float(label_loss(model, tok, prompts, labels, gold))
    assert got == pytest.approx(want / len(prompts), abs=1e-4)


def test_label_classifier_training_lowers_the_loss_and_leaves_the_base_model():
    tiny = build_tiny("llama")          # its own copy: LoRA goes into the model in place
    task = Subjectivity(data=str(FIXTURE))
    items = [(task.classifier_prompt(ex, 0), LABELS.index(ex.answer)) for ex in task.examples("train")]
    labels = [f" {lab}" for lab in LABELS]
    module = LabelClassifierModule(tiny, LabelSFTConfig(lr=1e-2, warmup_steps=1, batch_size=10, lora_rank=4,
                                                        lora_alpha=8), items, labels, steps=15, seed=0)
    prompts, gold = [p for p, _ in items], [g for _, g in items]
    with torch.no_grad():
        before = float(label_loss(module.policy, tiny.tokenizer, prompts, labels, gold))
    fit_label_classifier(module, RunContext(seed=0, profile=get_profile("smoke")))
    module.policy.eval()
    with torch.no_grad():
        after = float(label_loss(module.policy, tiny.tokenizer, prompts, labels, gold))
        with module.policy.disable_adapter():
            base_after = float(label_loss(module.policy, tiny.tokenizer, prompts, labels, gold))
    assert after < 0.5 * before
    assert base_after == pytest.approx(before, abs=1e-5)           # only the adapter learned
    assert len(module.curve) == 15


def test_sft_and_mstep_rows_through_the_harness(tmp_path):
    from gfnbench.runner import run

    out = run("subj", "sft", 0, profile="smoke", results_dir=str(tmp_path))
    record = json.loads((out / "record.json").read_text())
    assert "label_sft" in record["config"]["method"] and 0.0 <= record["metrics"]["test"]["accuracy"] <= 1.0
    samples = read_samples(out)
    assert {s["text"] for s in samples} <= {" objective", " subjective"}
    out = run("subj", "gflownet_mstep", 0, profile="smoke", results_dir=str(tmp_path))
    record = json.loads((out / "record.json").read_text())
    assert len(record["mstep_curve"]) == get_profile("smoke").train_steps
    assert record["config"]["method"]["rationales_per_example"] == 8
    assert {"accuracy", "rationale_accuracy"} <= set(record["metrics"]["test"])


def test_mstep_predicts_with_its_classifier_not_the_base_model(monkeypatch):
    tiny = build_tiny("llama")
    task = Subjectivity(data=str(FIXTURE))
    method = get_method("gflownet_mstep").factory(task, tiny, RunContext(seed=0, profile=get_profile("smoke")))
    seen = []
    monkeypatch.setattr(Subjectivity, "score_with_model", lambda self, model, *a: seen.append(model) or {})
    method.classifier = object()
    method.score_with_model(tiny.model, tiny.tokenizer, [" x"], task.examples("test")[0])
    assert seen == [method.classifier]


def test_tasks_choose_their_methods():
    assert "tempered" in methods_for("continuation") and "tempered" not in methods_for("arith")
    assert "zero_shot" not in methods_for("continuation") and "sft" not in methods_for("continuation")
    for task in ("arith", "rng", "infill", "subj", "subj50"):
        assert "sft" in methods_for(task)
    assert [t for t in ("arith", "continuation", "infill", "subj", "subj20") if "gflownet_mstep" in methods_for(t)] \
        == ["subj", "subj20"]
    assert not {"greedy", "beam", "diverse_beam", "nucleus"} & set(methods_for("subj"))
    cpu, smoke = get_profile("cpu"), get_profile("smoke")
    assert "ppo" not in default_methods(Continuation(), cpu) and "ppo" in default_methods(Continuation(), smoke)
    # arith: the paper's rows, the RL rows and the SFT-started rows (issue 28); nothing sampled at T = 1
    arith_cpu = default_methods(Arithmetic(), cpu)
    assert sorted(arith_cpu) == sorted(["greedy", "zero_shot", "few_shot", "sft", "ppo", "gflownet", "grpo", "flowrl",
                                        "tb_vargrad", "sft_gflownet", "sft_ppo", "sft_grpo"])
    assert arith_cpu[-3:] == ["sft_gflownet", "sft_ppo", "sft_grpo"]      # after the rows they start from
    assert "ppo" in default_methods(Arithmetic(), smoke)
    subj_cpu = default_methods(Subjectivity(), cpu)     # the paper's rows: zero-shot, few-shot, SFT, M-step
    assert {"zero_shot", "few_shot", "sft", "gflownet", "gflownet_mstep"} <= set(subj_cpu)
    assert not {"ppo", "grpo"} & set(subj_cpu)


def test_tempered_baseline_samples_at_the_final_reward_temperature():
    task = Continuation()
    method = get_method("tempered").factory(task, None, RunContext(seed=0, profile=get_profile("smoke")))
    assert method.temperature == 0.8 and method.decoding().temperature == 0.8
    assert method.exact_temperature == 0.8


def test_gflownet_settings_taken_from_the_task():
    ctx = RunContext(seed=0, profile=replace(get_profile("smoke"), train_steps=10))
    cont = get_method("gflownet").factory(Continuation(), build_tiny("llama"), ctx)
    assert cont.cfg.reward_temperature == (1.0, 0.8, 10)           # ramp squeezed into the 10-step run
    assert cont.cfg.dedup_tol == 0.25
    subj = get_method("gflownet").factory(Subjectivity(data=str(FIXTURE)), build_tiny("llama"), ctx)
    assert subj.cfg.reward_temperature == (1.2, 1.0, 150) and subj.cfg.dedup_tol == 0.1
