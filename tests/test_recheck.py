"""Records hold what a check needs (issue 26): adapters by default, rng's exact outcome distribution, a script
that re-derives the exact metrics from the stored adapters, and the floor of the sampled TV."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from gfnbench.runner import run
from gfnbench.tasks import get_task

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def trained_rng_run(tmp_path_factory):
    return run("rng", "gflownet", 0, profile="smoke", results_dir=str(tmp_path_factory.mktemp("runs")))


def test_a_trained_run_keeps_its_adapters_and_says_their_size(trained_rng_run):
    import hashlib

    record = json.loads((trained_rng_run / "record.json").read_text())
    blob = (trained_rng_run / "adapters.pt").read_bytes()
    assert record["adapters"] == {"file": "adapters.pt", "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def test_an_untrained_row_writes_no_adapters(tmp_path):
    out = run("rng", "temperature", 0, profile="smoke", results_dir=str(tmp_path))
    assert not (out / "adapters.pt").exists() and "adapters" not in json.loads((out / "record.json").read_text())


def test_rng_records_the_exact_outcome_distribution_its_metrics_come_from(trained_rng_run):
    record = json.loads((trained_rng_run / "record.json").read_text())
    outcomes = record["exact_outcomes"]["test"]["rng"]
    assert set(outcomes) == {str(v) for v in range(101)} | {"<invalid>"}
    assert sum(outcomes.values()) == pytest.approx(1.0, abs=1e-9)
    uniform = 1 / 101   # TV to the uniform target, by hand from the stored probabilities
    by_hand = 0.5 * (sum(abs(outcomes[str(v)] - uniform) for v in range(101)) + outcomes["<invalid>"])
    assert record["metrics"]["test"]["tv_exact"] == pytest.approx(by_hand, abs=1e-12)
    assert record["metrics"]["test"]["valid_exact"] == pytest.approx(1 - outcomes["<invalid>"], abs=1e-9)


def test_the_recheck_script_reproduces_the_record_and_catches_other_weights(trained_rng_run, tmp_path, capsys):
    recheck = script("recheck_exact")
    assert recheck.main([str(trained_rng_run)]) == 0
    assert "match to 1e-06" in capsys.readouterr().out
    other = tmp_path / "other"
    other.mkdir()
    for name in ("record.json", "config.json"):
        (other / name).write_bytes((trained_rng_run / name).read_bytes())
    states = torch.load(trained_rng_run / "adapters.pt")
    torch.save([{k: v + 0.05 * torch.randn_like(v) for k, v in s.items()} for s in states], other / "adapters.pt")
    assert recheck.main([str(other)]) == 1
    assert "tv_exact: record" in capsys.readouterr().out


def test_sampled_tv_floor_by_enumeration_on_a_small_case():
    """E[TV] of a 2-draw empirical from a fair coin: draws HH, TT give TV 0.5, HT, TH give 0: floor 0.25."""
    from gfnbench.metrics import expected_empirical_tv

    assert expected_empirical_tv([0.5, 0.5], 2) == pytest.approx(0.25)
    # three outcomes with p = (0.5, 0.25, 0.25), one draw: TV is 1 - p(drawn) -> 0.5*0.5 + 0.5*0.75 = 0.625
    assert expected_empirical_tv([0.5, 0.25, 0.25], 1) == pytest.approx(0.625)


def test_rng_floor_matches_the_issue_and_is_in_the_record(trained_rng_run):
    """The floor a perfect sampler's 256-draw TV sits on: ≈ 0.254 (rng), ≈ 0.19 (rng_peaked) per issue 26."""
    from gfnbench.metrics import expected_empirical_tv

    uniform = list(get_task("rng").target_distribution().values())
    peaked = list(get_task("rng_peaked").target_distribution().values())
    assert expected_empirical_tv(uniform, 256) == pytest.approx(0.254, abs=0.003)
    assert expected_empirical_tv(peaked, 256) == pytest.approx(0.19, abs=0.01)
    record = json.loads((trained_rng_run / "record.json").read_text())
    n = record["config"]["eval_samples"]
    assert record["metrics"]["test"]["tv_sampled_floor"] == pytest.approx(expected_empirical_tv(uniform, n))
    assert not math.isnan(record["metrics"]["test"]["tv_sampled_floor"])


def test_rescoring_a_committed_arith_run_adds_distinct_correct_and_keeps_the_earlier_rescoring(tmp_path):
    """benchmarks/rescore_from_samples.py on a copy of a committed run: the new per-question metric is counted
    from the run's own samples (by hand below: distinct whitespace-collapsed texts whose number after the last
    '=' is the answer), the other metrics stay, and the earlier `rescored` entry is kept under `earlier`."""
    import shutil

    from gfnbench.records import read_samples
    from gfnbench.tasks.arith import extract_answer

    src = REPO / "results" / "runs" / "arith" / "sft" / "seed0"
    run_dir = tmp_path / "arith" / "sft" / "seed0"
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("train", "*.pt"))
    before = json.loads((run_dir / "record.json").read_text())
    assert script("rescore_from_samples").main(["--task", "arith", "--results_dir", str(tmp_path),
                                                "--reason", "test"]) == 0
    after = json.loads((run_dir / "record.json").read_text())
    samples = read_samples(run_dir)
    answers = {(ex.id): ex.answer for split in ("test_3op",) for ex in get_task("arith").examples(split)}
    ids = after["per_question"]["test_3op"]["ids"]
    want = []
    for qid in ids:
        texts = [s["text"] for s in samples if s["split"] == "test_3op" and s["id"] == qid]
        want.append(float(len({" ".join(t.split()) for t in texts if extract_answer(t) == answers[qid]})))
    assert after["per_question"]["test_3op"]["distinct_correct"] == want
    assert after["metrics"]["test_3op"]["distinct_correct"] == pytest.approx(sum(want) / len(want))
    for split in ("test_3op", "test_4op", "test_5op"):
        for metric in ("accuracy", "pass@10", "valid", "logp_ref"):
            assert after["metrics"][split][metric] == before["metrics"][split][metric]
    assert after["rescored"]["reason"] == "test" and after["rescored"]["earlier"] == [
        *before["rescored"].get("earlier", []), {k: v for k, v in before["rescored"].items() if k != "earlier"}]
    assert after["metric_directions"]["distinct_correct"] == "higher" and "distinct_correct" in after["metric_info"]


def test_arith_reward_check_scores_a_recorded_gold_rationale_as_the_gold(tiny):
    """benchmarks/arith_reward_check.py on recorded texts (the --run path): a sample that is the gold rationale
    reads the gold's log R (to float rounding), does not count as above it, and holds all the right-answer mass."""
    mod = script("arith_reward_check")
    task = get_task("arith")
    ex = task.examples("test_3op")[0]
    row = mod.check_question(task, tiny, ex, 0, None, recorded=[" " + ex.rationale])
    assert row["n"] == 1 and row["beaten"] == 0 and row["best_correct"]
    assert row["best"] == pytest.approx(row["gold"], abs=1e-3) and math.isfinite(row["gold"])
    assert row["right_mass"] == pytest.approx(1.0)


def test_arith_posterior_space_is_counted_by_hand_and_holds_the_gold():
    """4 distinct operands: step 1 takes an ordered pair (4 x 3) with either operator (24 rationales); each of
    them goes on with one of the 2 unused numbers (x 2 operators: 96 two-step rationales), then with the last one
    (x 2: 192 three-step ones): 312 in all. 3 operands: 12 + 24 = 36."""
    mod = script("arith_posterior_check")
    task = get_task("arith")
    four = next(ex for ex in task.examples("test_4op")
                if len(set(mod.question_numbers(ex.question)[0])) == 4)
    space = mod.rationale_space(mod.question_numbers(four.question)[0])
    assert len(space) == 312 and len(set(space)) == 312
    assert [sum(t.count("=") == k for t in space) for k in (1, 2, 3)] == [24, 96, 192]
    assert " " + four.rationale in space
    assert len(mod.rationale_space([1, 2, 3])) == 36
    assert mod.rationale_space([2, 5])[:2] == [" 2 + 5 = 7", " 2 - 5 = -3"]


def test_arith_posterior_shares_by_hand():
    """log R 0 and log 3 with the right answer on the second: share 3/4 at T = 1, 9/10 at T = 0.5."""
    mod = script("arith_posterior_check")
    assert mod.posterior_shares([0.0, math.log(3)], [False, True], 1.0) == pytest.approx(0.75)
    assert mod.posterior_shares([0.0, math.log(3)], [False, True], 0.5) == pytest.approx(0.9)


def test_arith_posterior_check_scores_the_gold_as_the_reward_does(tiny):
    """One 3-operand question on the tiny model: the gold rationale's log R in the enumeration equals
    arith_reward_check's score of it alone, and every share lies in [0, 1] with the step shares summing to 1."""
    mod, check = script("arith_posterior_check"), script("arith_reward_check")
    task = get_task("arith")
    ex = task.examples("test_3op")[0]
    row = mod.check_question(task, tiny, ex)
    alone = check.check_question(task, tiny, ex, 0, None, recorded=[" " + ex.rationale])["gold"]
    assert row["candidates"] == len(mod.rationale_space(mod.question_numbers(ex.question)[0]))
    assert row["gold_log_r"] == pytest.approx(alone, abs=1e-3)
    assert all(0.0 <= v <= 1.0 for k, v in row.items() if "share" in k)
    assert row["steps1_share_T1"] + row["steps2_share_T1"] == pytest.approx(1.0)


def test_arith_posterior_check_sets_a_runs_policy_beside_the_target(tmp_path):
    """The --run path: a run folder's adapters load into a policy of its shape, and the policy's distribution over
    the space is a distribution (mass in the space at most 1, its step shares summing to 1, TV in [0, 1])."""
    from gfnbench.models import build_tiny
    from gfnbench.policy import lora_policy

    mod = script("arith_posterior_check")
    task = get_task("arith")
    ex = task.examples("test_3op")[0]
    lm = build_tiny("llama")                     # its own model: the policy's LoRA goes into it
    row = mod.check_question(task, lm, ex)
    donor = lora_policy(build_tiny("llama"), 4, 8, None, seed=1)
    with torch.no_grad():
        state = {n: p.detach().clone().normal_() for n, p in donor.named_parameters() if p.requires_grad}
    torch.save([state], tmp_path / "adapters.pt")
    (tmp_path / "config.json").write_text(json.dumps(
        {"method": {"gflownet": {"lora_rank": 4, "lora_alpha": 8, "lora_targets": None}, "train_steps": 40}}))
    policy = mod.load_run_policy(lm, tmp_path)
    assert all(torch.equal(p, state[n]) for n, p in policy.named_parameters() if p.requires_grad)
    out = mod.policy_against_target(task, lm, policy, ex, row)
    assert 0.0 < out["policy_mass_in_space"] <= 1.0 + 1e-6
    assert out["policy_steps1_share"] + out["policy_steps2_share"] == pytest.approx(1.0)
    assert 0.0 <= out["policy_right_share"] <= 1.0
    assert all(0.0 <= out[f"policy_tv_to_target_T{t:g}"] <= 1.0 for t in mod.TEMPERATURES)
