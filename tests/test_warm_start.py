"""Warm start (`init: sft`, the sft_<row> names): the row's policy is the same seed's SFT adapter at step 0, an
existing SFT run is reused (else trained first, as a run of its own), and the budget and record say so."""
import hashlib
import json

import pytest
import torch

from gfnbench.catalog import get_method, methods_for
from gfnbench.gflownet import GFlowNetModule
from gfnbench.models import adapters_off, load_model
from gfnbench.policy import lora_policy
from gfnbench.preflight import check_run, default_methods
from gfnbench.profiles import PROFILES
from gfnbench.runner import run
from gfnbench.sampling import encode
from gfnbench.tasks import get_task

SMOKE = PROFILES["smoke"]


def target_log_probs(model, tokenizer, task, examples) -> torch.Tensor:
    """log p(gold target token | prompt, earlier target tokens), full vocabulary, by plain forward passes."""
    out = []
    with torch.no_grad():
        for ex in examples:
            prompt, target = encode(tokenizer, [task.prompt(ex)])[0], encode(tokenizer, [task.target(ex)])[0]
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0].float()
            logp = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
            out.append(logp.gather(-1, torch.tensor(target)[:, None]).squeeze(-1))
    return torch.cat(out)


def sft_model(folder):
    """The SFT run's policy rebuilt from its record and adapters.pt on a fresh copy of the smoke model."""
    record = json.loads((folder / "record.json").read_text())
    cfg = record["config"]["method"]["sft"]
    lm = load_model(SMOKE.model)
    policy = lora_policy(lm, cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_targets"], 0)
    state = torch.load(folder / "adapters.pt", weights_only=True)[0]
    assert set(state) == {n for n, p in policy.named_parameters() if p.requires_grad}
    policy.load_state_dict(state, strict=False)
    return policy.eval(), lm.tokenizer


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def with_sft(tmp_path_factory):
    """A results folder holding a finished arith SFT run (seed 0)."""
    root = tmp_path_factory.mktemp("warm")
    run("arith", "sft", 0, profile="smoke", results_dir=str(root))
    return root


def test_the_first_step_runs_the_sft_adapter(with_sft, monkeypatch):
    task = get_task("arith")
    gold = [ex for ex in task.examples("train") if task.target(ex) is not None][:3]
    seen = []
    original = GFlowNetModule.training_step

    def first_step_log_probs(self, batch, batch_idx):
        if not seen:      # before any optimizer step
            self.policy.eval()
            seen.append(target_log_probs(self.policy, self.tokenizer, self.task, gold))
        return original(self, batch, batch_idx)

    monkeypatch.setattr(GFlowNetModule, "training_step", first_step_log_probs)
    run("arith", "sft_gflownet", 0, profile="smoke", results_dir=str(with_sft), overwrite=True)
    policy, tokenizer = sft_model(with_sft / "runs/arith/sft/seed0")
    sft = target_log_probs(policy, tokenizer, task, gold)
    with adapters_off(policy) as base:
        base_logp = target_log_probs(base, tokenizer, task, gold)
    torch.testing.assert_close(seen[0], sft, atol=1e-6, rtol=0)
    assert (seen[0] - base_logp).abs().max() > 1e-3       # SFT moved the model, so this is not the base model


def test_an_existing_sft_run_is_reused_and_counted(with_sft, monkeypatch):
    import gfnbench.baselines.sft as sft_module

    folder = with_sft / "runs/arith/sft/seed0"
    before = (digest(folder / "record.json"), (folder / "record.json").stat().st_mtime_ns,
              digest(folder / "adapters.pt"))

    def no_training(*args, **kwargs):
        raise AssertionError("the SFT run exists: it must not be trained again")

    monkeypatch.setattr(sft_module, "fit_sft", no_training)
    out = run("arith", "sft_grpo", 0, profile="smoke", results_dir=str(with_sft))
    assert before == (digest(folder / "record.json"), (folder / "record.json").stat().st_mtime_ns,
                      digest(folder / "adapters.pt"))
    record = json.loads((out / "record.json").read_text())
    sft = json.loads((folder / "record.json").read_text())
    assert record["settings"] == {"init": "sft"}
    assert record["warm_start"] == {"init": "sft", "run": "runs/arith/sft/seed0", "git_commit": sft["git_commit"],
                                    "record_sha256": before[0], "adapters_sha256": before[2],
                                    "trained_for_this_run": False}
    budget, grpo_steps = record["budget"], record["config"]["method"]["iterations"]
    assert budget["optimizer_steps"] == grpo_steps + sft["budget"]["optimizer_steps"]
    assert budget["labelled_detail"] == sft["budget"]["labelled_detail"] == {"train_gold": 10, "val_gold": 50}
    assert budget["labelled_items"] == 60 and budget["reward_calls"] == budget["reward_evaluations"] > 0
    assert budget["summary"].startswith("warm start from runs/arith/sft/seed0 (3 SFT steps, 60 labelled items")
    assert budget["summary"].endswith("then 3 iterations x 4 samples, 1 epochs each")


def test_a_missing_sft_run_is_trained_first_and_gives_the_same_row(with_sft, tmp_path):
    """In an empty results folder the SFT run is trained first, as a run of its own, and the warm-started row is
    the one a reused SFT run gives (the same samples and metrics)."""
    out = run("arith", "sft_gflownet", 0, profile="smoke", results_dir=str(tmp_path))
    folder = tmp_path / "runs/arith/sft/seed0"
    sft = json.loads((folder / "record.json").read_text())
    assert sft["method"] == "sft" and sft["settings"] == {} and (folder / "adapters.pt").is_file()
    record = json.loads((out / "record.json").read_text())
    assert record["warm_start"]["trained_for_this_run"] is True
    assert record["warm_start"]["record_sha256"] == digest(folder / "record.json")
    reused_record = with_sft / "runs/arith/sft_gflownet/seed0/record.json"
    if not reused_record.exists():      # (test_the_first_step_runs_the_sft_adapter runs it)
        run("arith", "sft_gflownet", 0, profile="smoke", results_dir=str(with_sft))
    reused = json.loads(reused_record.read_text())
    assert record["metrics"] == reused["metrics"] and record["budget"] == reused["budget"]
    assert record["budget"]["labelled_detail"] == {"train_gold": 10, "val_gold": 50, "seeded": 10}


def test_bad_init_values_and_tasks_are_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"^gflownet settings: init must be 'base' .* or 'sft' .*got 'sfty'$"):
        check_run("arith", "gflownet", 0, "smoke", str(tmp_path), settings={"gflownet": {"init": "sfty"}})
    with pytest.raises(ValueError, match="ppo with init=sft: on task subj sft is a label classifier"):
        check_run("subj", "ppo", 0, "smoke", str(tmp_path), settings={"ppo": {"init": "sft"}})
    with pytest.raises(ValueError, match="sft does not apply to task continuation"):
        check_run("continuation", "grpo", 0, "smoke", str(tmp_path), settings={"grpo": {"init": "sft"}})
    with pytest.raises(ValueError, match="method sft_gflownet fixes init='sft'"):
        get_method("sft_gflownet").check_settings({"init": "base"})
    with pytest.raises(ValueError, match="does not apply to task 'subj'"):
        check_run("subj", "sft_gflownet", 0, "smoke", str(tmp_path))
    assert not list(tmp_path.iterdir())      # nothing created


def test_derived_rows_apply_where_gold_sft_does_and_run_only_when_named_or_wanted_by_the_task():
    derived = {"sft_gflownet", "sft_ppo", "sft_grpo", "sft_flowrl", "sft_tb_vargrad"}
    for task in ("arith", "infill", "rng"):
        assert derived <= set(methods_for(task))
        defaults = set(default_methods(get_task(task), PROFILES["cpu"]))
        assert derived & defaults == set(get_task(task).bench_variants)     # arith's bench names three of them
    assert get_task("arith").bench_variants == ("sft_gflownet", "sft_ppo", "sft_grpo")
    assert not derived & set(methods_for("subj")) and not derived & set(methods_for("continuation"))
    spec = get_method("sft_ppo")
    assert spec.factory is get_method("ppo").factory and spec.trains and spec.check_settings({}) == {"init": "sft"}


def test_a_lora_shape_other_than_sfts_is_refused(with_sft):
    with pytest.raises(ValueError, match=r"cannot start from runs/arith/sft/seed0: its LoRA rank is 4.*lora_rank"):
        run("arith", "sft_tb_vargrad", 0, profile="smoke", results_dir=str(with_sft),
            settings={"sft_tb_vargrad": {"lora_rank": 2}})
    assert not (with_sft / "runs/arith/sft_tb_vargrad").exists()


def test_an_sft_run_without_its_adapter_is_named(tmp_path):
    run("arith", "sft", 0, profile="smoke", results_dir=str(tmp_path), save_adapters=False)
    with pytest.raises(ValueError, match=r"no adapters.pt \(it ran with --save_adapters false\).*--overwrite true"):
        run("arith", "sft_ppo", 0, profile="smoke", results_dir=str(tmp_path))


def test_a_base_row_set_to_init_sft_starts_from_sft_too(with_sft):
    out = run("arith", "ppo", 0, profile="smoke", results_dir=str(with_sft), settings={"ppo": {"init": "sft"}})
    record = json.loads((out / "record.json").read_text())
    assert record["method"] == "ppo" and record["settings"] == {"init": "sft"}
    assert record["warm_start"]["run"] == "runs/arith/sft/seed0" and not record["warm_start"]["trained_for_this_run"]
    assert record["budget"]["summary"].startswith("warm start from runs/arith/sft/seed0 (3 SFT steps")
