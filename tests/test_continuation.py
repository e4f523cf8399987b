"""Sentence continuation: the reward of every prefix, the stop token and mask, data files, splits, scores, harness."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from gfnbench.records import read_samples
from gfnbench.tasks import get_task
from gfnbench.tasks.continuation import BUILTIN, allowed_token, period_id
from gfnbench.trajectories import from_rows

FIXTURES = Path(__file__).parent / "fixtures"
PROMPTS = FIXTURES / "prompts_12.txt"


def task(**kw):
    return get_task("continuation", data=str(PROMPTS), **kw)


def test_reward_of_every_prefix_is_log_p_of_prefix_then_period(tiny):
    tok, model = tiny.tokenizer, tiny.model
    t = task()
    exs = t.examples("train")[:2]
    period = tok.convert_tokens_to_ids(".")
    states = [tok(" the cat sat on the dog", add_special_tokens=False)["input_ids"],
              tok(" she ran home", add_special_tokens=False)["input_ids"],
              tok(" it", add_special_tokens=False)["input_ids"]]
    traj = from_rows([exs[g].question for g in (0, 1, 0)], [0, 1, 0],
                     [tok(exs[g].question, add_special_tokens=False)["input_ids"] for g in (0, 1, 0)],
                     states, [[True] * len(s) for s in states], [True] * 3,
                     [[0.0] * len(s) for s in states], [[0.0] * (len(s) + 1) for s in states],
                     [tok.decode(s) for s in states], tok.pad_token_id)
    with torch.no_grad():
        got = t.log_reward(model, tok, traj, exs)
    assert got.shape == (3, max(map(len, states)) + 1)
    for b, g in enumerate((0, 1, 0)):
        ctx = tok(exs[g].question, add_special_tokens=False)["input_ids"]
        assert got[b, 0] == float("-inf")                 # min_len 1: the empty sentence is impossible
        for j in range(1, len(states[b]) + 1):
            seq = ctx + states[b][:j] + [period]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq])).logits[0], -1)
            want = sum(float(lp[i - 1, seq[i]]) for i in range(len(ctx), len(seq)))
            assert abs(float(got[b, j]) - want) < 1e-3, (b, j)


def test_stop_is_the_period_token_and_the_mask_blocks_sentence_breakers(tiny):
    tok = tiny.tokenizer
    t = task()
    assert t.stop_id(tok) == tok.convert_tokens_to_ids(".")
    mask = t.allowed_tokens(tok)
    assert mask[t.stop_id(tok)] and not mask[tok.eos_token_id] and not mask[tok.pad_token_id]
    for text in ["\n", "!", "?", '"', "F"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and not mask[ids[0]], text
    for i in mask.nonzero().flatten().tolist():
        text = tok.decode([i])
        assert i == t.stop_id(tok) or not set(text) & set('.!?"\n\t') and text.strip() not in {"F", "J", "Mr"}, text
    for text in [" the", " home", "A", ","]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and mask[ids[0]], text
    for text in ["\n", "!", "?", '"', ".", "..", " .", '."', " F", "Z", " Mr", "Dr", " US", " http", "://", "--",
                 "'", " '", "  ", "\t", "é", "<|endoftext|>"]:
        assert not allowed_token(text), text
    for text in [" the", " I", " A", "a", " b", "x", " ", "3", " don", "'t", "'s", "n't", ",", " (", "%"]:
        assert allowed_token(text), text


def test_a_tokenizer_without_a_lone_period_token_is_refused():
    class Merging:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7, 8]}

        def decode(self, ids):
            return {7: "A", 8: " sentence."}[ids[0]]

    with pytest.raises(ValueError, match="single '.' token"):
        period_id(Merging())


def test_splits_are_disjoint_deterministic_and_cover_every_prompt(tmp_path):
    lines = PROMPTS.read_text().splitlines()
    a, b = task(), task()
    sizes = {s: len(a.examples(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 9, "val": 1, "test": 2}
    texts = {s: [e.question for e in a.examples(s)] for s in sizes}
    assert sorted(sum(texts.values(), [])) == sorted(lines)
    for s in sizes:
        assert a.examples(s) == b.examples(s)
    assert not set(texts["train"]) & set(texts["val"]) and not set(texts["train"]) & set(texts["test"])
    assert not set(texts["val"]) & set(texts["test"])
    assert [e.question for e in task(seed=1).examples("train")] != texts["train"]
    # duplicates (up to whitespace) are dropped before splitting, so no prompt can land in two splits
    dup = tmp_path / "dup.txt"
    dup.write_text("\n".join(lines + [f"  {lines[0]}  ", lines[3].replace(" ", "   ")]) + "\n")
    d = get_task("continuation", data=str(dup))
    all_texts = [e.question for s in ("train", "val", "test") for e in d.examples(s)]
    assert sorted(all_texts) == sorted(lines)
    with pytest.raises(ValueError, match="splits train, val, test"):
        a.examples("dev")


def test_prompt_has_no_trailing_space_and_data_source_names_the_file():
    t = task()
    ex = t.examples("test")[0]
    assert t.prompt(ex) == ex.question and not ex.question.endswith(" ")
    assert str(PROMPTS) in t.data_source
    assert t.report_logp_ref_max and t.training.reward_temperature == (1.0, 0.8, 750)


def test_jsonl_prompts_are_read():
    t = get_task("continuation", data=str(FIXTURES / "prompts.jsonl"))
    texts = sorted(e.question for s in ("train", "val", "test") for e in t.examples(s))
    assert texts == sorted(json.loads(line)["prompt"] for line in (FIXTURES / "prompts.jsonl").read_text().splitlines()
                           if line.strip())


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b"", "no prompts"),
    ("blank.txt", b"\n  \n", "no prompts"),
    ("latin1.txt", b"One.\nTwo.\nCaf\xe9 time.\n", "line 3: not UTF-8"),
    ("two.txt", b"One.\nTwo.\n", "need at least 3"),
    ("noprompt.jsonl", b'{"prompt": "One."}\n{"text": "Two."}\n',
     "line 2: expected an object with a string \"prompt\""),
    ("badjson.jsonl", b'{"prompt": "One."}\n{"prompt": "Two."}\n{"prompt": \n', "line 3: invalid JSON"),
    ("emptyprompt.jsonl", b'{"prompt": "One."}\n{"prompt": "  "}\n', "line 2: empty prompt"),
])
def test_bad_data_files_give_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        get_task("continuation", data=str(path))
    assert str(path) in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        get_task("continuation", data=str(tmp_path / "nope.txt"))


def test_builtin_prompts_split_70_10_20():
    if not BUILTIN.is_file():
        pytest.skip(f"{BUILTIN} not written yet")
    t = get_task("continuation")
    n = sum(len(t.examples(s)) for s in ("train", "val", "test"))
    assert len(t.examples("test")) == round(0.2 * n) and "built-in sample" in t.data_source


def test_score_keys_and_values():
    t = task()
    ex = t.examples("test")[0]
    s = t.score([" the cat sat", " the dog sat"], ex)
    assert set(s) == {"diversity", "distinct_1", "distinct_2", "mean_words"}
    assert s["distinct_1"] == pytest.approx(4 / 6) and s["distinct_2"] == 1.0 and s["mean_words"] == 3.0
    assert 0.0 < s["diversity"] < 1.0
    same = t.score([" the cat sat.", " the cat sat"], ex)     # the final period is stripped before embedding
    assert same["diversity"] == pytest.approx(0.0, abs=1e-5) and same["distinct_1"] == 0.5


def test_smoke_run_through_the_harness(tmp_path):
    from gfnbench.runner import run

    out = run("continuation", "greedy", 0, profile="smoke", results_dir=str(tmp_path), data=str(PROMPTS))
    rec = json.loads((out / "record.json").read_text())
    assert set(rec["metrics"]["test"]) >= {"diversity", "distinct_1", "distinct_2", "mean_words", "logp_ref",
                                           "logp_ref_max"}
    assert str(PROMPTS) in rec["data"] and "diversity" in rec["metric_info"]
    assert rec["data_sha256"] == hashlib.sha256(PROMPTS.read_bytes()).hexdigest()
    samples = read_samples(out)
    assert len(samples) == 2 and all("." not in s["text"] for s in samples)    # greedy: 1 sample x 2 test prompts


def test_cli_data_option(tmp_path, capsys):
    from gfnbench.cli import main

    main(["run", "--task", "continuation", "--method", "greedy", "--data", str(PROMPTS), "--profile", "smoke",
          "--results_dir", str(tmp_path)])
    rec = json.loads((tmp_path / "runs/continuation/greedy/seed0/record.json").read_text())
    assert str(PROMPTS) in rec["data"]
    with pytest.raises(SystemExit):
        main(["run", "--task", "arith", "--method", "greedy", "--data", str(PROMPTS), "--results_dir", str(tmp_path)])
    assert "task arith does not read a data file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--task", "continuation", "--method", "greedy", "--data", str(tmp_path / "x.txt"),
              "--results_dir", str(tmp_path)])
    assert "x.txt does not exist" in capsys.readouterr().err
