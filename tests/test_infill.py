"""Story infilling: the paper's reward p(Z Y | X) for every prefix, prompt/target/mask, CSV data, splits, scores."""
import csv
import json
from pathlib import Path

import pytest
import torch

from gfnbench.records import read_samples
from gfnbench.tasks import Example, get_task
from gfnbench.trajectories import from_rows

FIXTURES = Path(__file__).parent / "fixtures"
STORIES = FIXTURES / "rocstories_12.csv"
HEADER = "storyid,storytitle,sentence1,sentence2,sentence3,sentence4,sentence5\n"


def task(**kw):
    return get_task("infill", data=str(STORIES), **kw)


def stopped_trajectories(t, tok, exs, states):
    """One stopped trajectory per example with the given action tokens (log-probs unused: zeros)."""
    prompts = [t.prompt(e) for e in exs]
    return from_rows(prompts, list(range(len(exs))), [tok(p, add_special_tokens=False)["input_ids"] for p in prompts],
                     states, [[True] * len(s) for s in states], [True] * len(states), [[0.0] * len(s) for s in states],
                     [[0.0] * (len(s) + 1) for s in states], [tok.decode(s) for s in states], tok.pad_token_id)


def raw_stories() -> dict[str, dict]:
    with open(STORIES, newline="") as f:
        return {row["storyid"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("stop", [".", "eos"])
def test_reward_of_every_prefix_is_log_p_of_prefix_then_ending_given_the_beginning(tiny, stop):
    tok, model = tiny.tokenizer, tiny.model
    t = task(stop=stop)
    exs = t.examples("train")[:2]
    rows = raw_stories()
    states = [tok(" the dog ran home to the cat", add_special_tokens=False)["input_ids"],
              tok(" she sat with the big dog", add_special_tokens=False)["input_ids"]]
    traj = stopped_trajectories(t, tok, exs, states)
    with torch.no_grad():
        got = t.log_reward(model, tok, traj, exs)
    for b, ex in enumerate(exs):
        row = rows[ex.id]
        ctx = tok(f"{row['sentence1']} {row['sentence2']} {row['sentence3']}", add_special_tokens=False)["input_ids"]
        ending = (". " if stop == "." else " ") + row["sentence5"]
        suffix = tok(ending, add_special_tokens=False)["input_ids"]
        for j in range(len(states[b]) + 1):
            if j < t.min_len:
                assert got[b, j] == float("-inf")
                continue
            seq = ctx + states[b][:j] + suffix
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq])).logits[0], -1)
            want = sum(float(lp[i - 1, seq[i]]) for i in range(len(ctx), len(seq)))
            assert abs(float(got[b, j]) - want) < 1e-3, (b, j)


def test_prompt_target_lengths_and_stop(tiny):
    tok = tiny.tokenizer
    rows = raw_stories()
    t, paper = task(), task(stop="eos")
    ex = next(e for s in ("train", "val", "test") for e in t.examples(s) if e.id == "s01")
    assert t.prompt(ex) == ("Beginning: The cat sat at home. It was a good day. She was very happy.\n"
                            "Ending: The cat ran from the dog.\nMiddle:")
    assert t.target(ex) == " " + rows["s01"]["sentence4"][:-1] and paper.target(ex) == " " + rows["s01"]["sentence4"]
    assert (t.min_len, t.max_len, paper.min_len, paper.max_len) == (4, 24, 5, 25)
    assert t.stop_id(tok) == tok.convert_tokens_to_ids(".") and paper.stop_id(tok) == tok.eos_token_id
    # with "." as the stop, a gold middle is a trajectory only if its one period is the last character
    for s4 in ["He won!", "It was 5 p.m. there.", "Why?"]:
        assert t.target(Example("x", "q", "a", s4)) is None and paper.target(Example("x", "q", "a", s4)) == f" {s4}"
    mask = t.allowed_tokens(tok)
    assert mask[t.stop_id(tok)] and not mask[tok.eos_token_id]
    assert all("." not in tok.decode([i]) for i in mask.nonzero().flatten().tolist() if i != t.stop_id(tok))
    assert not mask[tok("\n", add_special_tokens=False)["input_ids"][0]]
    assert mask[tok(" the", add_special_tokens=False)["input_ids"][0]] and paper.allowed_tokens(tok) is None
    with pytest.raises(ValueError, match="stop must be"):
        task(stop="newline")


def test_demonstrations_make_a_three_shot_prompt():
    from gfnbench.catalog import methods_for

    t = task()
    ex = t.examples("test")[0]
    prompt = t.shots_prompt(ex, 3)
    demos = t.demonstrations()
    assert len(demos) == 3 and all(d in t.examples("train") for d in demos)
    assert prompt.endswith("\n\n" + t.prompt(ex)) and prompt.count("Middle:") == 4
    assert f"Middle: {demos[0].rationale}\n\nBeginning:" in prompt
    assert "few_shot" in methods_for("infill") and "zero_shot" in methods_for("infill")


def test_splits_are_disjoint_deterministic_and_deduplicated(tmp_path):
    a, b = task(), task()
    stories = {s: [(e.question, e.rationale, e.answer) for e in a.examples(s)] for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in stories.items()} == {"train": 9, "val": 1, "test": 2}
    assert not set(stories["train"]) & set(stories["val"]) and not set(stories["train"]) & set(stories["test"])
    assert not set(stories["val"]) & set(stories["test"])
    assert sorted(e.id for s in stories for e in a.examples(s)) == sorted(raw_stories())
    for s in stories:
        assert a.examples(s) == b.examples(s)
    lines = STORIES.read_text().splitlines()
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join(lines + [lines[1].replace("s01,", "s99,", 1), lines[5]]) + "\n")
    d = get_task("infill", data=str(dup))
    assert sum(len(d.examples(s)) for s in stories) == 12


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (HEADER.encode(), "no stories"),
    (b"storyid,storytitle,sentence1,sentence2,sentence3,sentence4\ns1,T,A.,B.,C.,D.\n", "missing column sentence5"),
    ((HEADER + "s1,T,A.,B.,C.,D.,E.\ns2,T,A.,B.,C.,D.,\n").encode(), "line 3: story 's2' has an empty sentence5"),
    ((HEADER + "s1,T,A.,B.,C.,D.,E.\ns2,T,A.,B.,C.,D.\n").encode(), "line 3: story 's2' has an empty sentence5"),
    ((HEADER + "s1,T,A.,B.,C.,D.,E.\n").encode() + b"s2,T,A.,B.,Caf\xe9.,D.,E.\n", "line 3: not UTF-8"),
])
def test_bad_csv_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "stories.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        get_task("infill", data=str(path))
    assert str(path) in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        get_task("infill", data=str(tmp_path / "nope.csv"))


def test_score_against_the_reference_middle():
    t = task()
    ex = Example("x", "q", "a", "The dog ran in to the cat.")
    same = t.score([" The dog ran in to the cat", " The dog ran in to the cat."], ex)
    assert set(same) == {"bleu4", "gleu", "bertscore_f1", "diversity"}
    assert same["bleu4"] == pytest.approx(100.0) and same["gleu"] == pytest.approx(1.0)
    assert same["bertscore_f1"] == pytest.approx(1.0, abs=1e-4) and same["diversity"] == pytest.approx(0.0, abs=1e-5)
    other = t.score([" She sat at home with a big cat", " The dog ran in to the cat"], ex)
    assert other["bleu4"] < 60 and other["gleu"] < 0.6 and other["bertscore_f1"] < same["bertscore_f1"]
    assert "tok:13a" in t.metric_info["bleu4"]


def test_smoke_run_through_the_harness(tmp_path):
    from gfnbench.runner import run

    out = run("infill", "zero_shot", 0, profile="smoke", results_dir=str(tmp_path), data=str(STORIES))
    rec = json.loads((out / "record.json").read_text())
    assert set(rec["metrics"]["test"]) == {"bleu4", "gleu", "bertscore_f1", "diversity", "logp_ref"}
    assert str(STORIES) in rec["data"] and "version" in rec["metric_info"]["bleu4"]
    samples = read_samples(out)
    assert all("." not in s["text"] for s in samples)


def test_samples_carry_the_gold_middle_the_metrics_compare_with(tmp_path):
    """A reader re-checks BLEU from samples.jsonl alone: the field named by `scored_against` reproduces the
    record's per-question BLEU, and the ending is kept under its own name."""
    from gfnbench.runner import run
    from gfnbench.tasks.infill import for_scoring

    out = run("infill", "zero_shot", 0, profile="smoke", results_dir=str(tmp_path), data=str(STORIES))
    rec, samples, t = json.loads((out / "record.json").read_text()), read_samples(out), task()
    assert rec["scored_against"]["bleu4"] == "reference"
    gold = {ex.id: ex for split in ("train", "val", "test") for ex in t.examples(split)}
    assert all(s["reference"] == gold[s["id"]].rationale and s["ending"] == gold[s["id"]].answer for s in samples)
    assert "answer" not in samples[0]
    per_q = rec["per_question"]["test"]
    from gfnbench.metrics import bleu4
    for qid, expected in zip(per_q["ids"], per_q["bleu4"]):
        rows = [s for s in samples if s["id"] == qid]
        recomputed = sum(bleu4(for_scoring(s["text"]), for_scoring(s["reference"])) for s in rows) / len(rows)
        assert recomputed == pytest.approx(expected, abs=1e-9)


def test_tuned_reward_lm_is_a_fine_tuned_copy_and_the_reward_uses_it():
    from gfnbench.models import adapters_off, add_lora, build_tiny
    from gfnbench.tasks.infill import Infill, InfillTunedReward
    from gfnbench.text_finetune import TextFinetuneConfig, mean_token_nll

    lm = build_tiny("llama")
    tok = lm.tokenizer
    policy = add_lora(lm.model, rank=4, alpha=8)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    t = InfillTunedReward(data=str(STORIES))
    t.reward_finetune = TextFinetuneConfig(epochs=4, lr=1e-3, batch_size=4)
    exs = t.examples("train")[:2]
    states = [tok(" the dog ran home", add_special_tokens=False)["input_ids"],
              tok(" she sat with the big dog", add_special_tokens=False)["input_ids"]]
    traj = stopped_trajectories(t, tok, exs, states)
    with torch.no_grad(), adapters_off(policy) as base:
        got = t.log_reward(base, tok, traj, exs)
        untuned = Infill.log_reward(t, base, tok, traj, exs)
        tuned = t.tuned_reward_lm
        assert t.log_reward(base, tok, traj, exs).equal(got) and t.tuned_reward_lm is tuned   # made once
        want = Infill.log_reward(t, tuned, tok, traj, exs)
        texts = t.training_texts()
        assert mean_token_nll(tuned, tok, texts) < mean_token_nll(base, tok, texts) - 0.5
    assert got.equal(want) and not got[:, t.min_len:].equal(untuned[:, t.min_len:])
    assert len(t.reward_finetune_curve) == 4 * -(-len(texts) // 4)
    assert not hasattr(tuned, "peft_config") and not any(p.requires_grad for p in tuned.parameters())
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in before.items())     # the policy is untouched


def test_mean_token_nll_by_explicit_forward(tiny):
    from gfnbench.text_finetune import mean_token_nll

    tok, model = tiny.tokenizer, tiny.model
    texts = ["the dog ran home", "she sat with the big dog and the cat"]
    total, count = 0.0, 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        total -= sum(float(lp[i - 1, ids[i]]) for i in range(1, len(ids)))
        count += len(ids) - 1
    assert mean_token_nll(model, tok, texts) == pytest.approx(total / count, abs=1e-4)
