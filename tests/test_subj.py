"""subj (gfnbench/tasks/subj.py): rewards and predictions against explicit forward passes of the tiny model, the vote's
tie rule, seeded disjoint nested splits, the --data folder and each bad-data error, and a harness run."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gfnbench.catalog import get_method
from gfnbench.records import read_samples
from gfnbench.sampling import sample
from gfnbench.tasks import get_task
from gfnbench.tasks.subj import FILES, LABELS, Subjectivity, vote
from gfnbench.trajectories import from_rows

FIXTURE = Path(__file__).parent / "fixtures" / "subj"


@pytest.fixture(scope="module")
def task():
    return Subjectivity(data=str(FIXTURE))


def suffix_log_prob(model, prefix: list[int], suffix: list[int]) -> float:
    """sum_i log p(suffix_i | prefix, suffix_<i): an explicit, unbatched forward pass."""
    seq = prefix + suffix
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
    return sum(float(logp[i - 1, seq[i]]) for i in range(len(prefix), len(seq)))


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tiny_tokenizer_round_trips_the_task_strings(tiny, task):
    """Byte-level BPE: every prompt and answer encodes; the label words decode back exactly."""
    tok = tiny.tokenizer
    ex = task.examples("test")[0]
    for text in (task.prompt(ex), task.label_suffix("objective"), task.label_suffix("subjective")):
        assert tok.decode(ids(tok, text)) == text
    assert len(ids(tok, task.prompt(ex))) < 200


def test_reward_every_prefix_equals_explicit_forward_with_penalty(tiny, task):
    """Same rationales scored for an objective and a subjective example: at every prefix exactly one of the two
    is predicted wrong, so both the penalty and the no-penalty case are checked against explicit passes."""
    tok, model = tiny.tokenizer, tiny.model
    obj = next(e for e in task.examples("test") if e.answer == "objective")
    sub = next(e for e in task.examples("test") if e.answer == "subjective")
    states = [ids(tok, " very good"), ids(tok, " a film about love"), ids(tok, " not")]
    rows = [(g, s) for g in (0, 1) for s in states]
    prompts = [task.prompt([obj, sub][g]) for g, _ in rows]
    traj = from_rows(prompts, [g for g, _ in rows], [ids(tok, p) for p in prompts], [s for _, s in rows],
                     [[True] * len(s) for _, s in rows], [True] * len(rows), [[0.0] * len(s) for _, s in rows],
                     [[0.0] * (len(s) + 1) for _, s in rows], [tok.decode(s) for _, s in rows], tok.pad_token_id)
    with torch.no_grad():
        got = task.log_reward(model, tok, traj, [obj, sub])
    penalised = unpenalised = 0
    for b, (g, state) in enumerate(rows):
        ex = [obj, sub][g]
        x = ids(tok, task.prompt(ex))
        assert got[b, 0] == float("-inf")                        # min_len 1: the empty rationale cannot stop
        for j in range(1, len(state) + 1):
            lp = {label: suffix_log_prob(model, x, state[:j] + ids(tok, f", so it is {label}.")) for label in LABELS}
            predicted = "objective" if lp["objective"] > lp["subjective"] else "subjective"
            want = lp[ex.answer] + (-50.0 if predicted != ex.answer else 0.0)
            assert abs(float(got[b, j]) - want) < 1e-3, (b, j, float(got[b, j]), want)
            penalised += predicted != ex.answer
            unpenalised += predicted == ex.answer
    assert penalised == unpenalised > 0


def test_reward_of_sampled_trajectories_is_finite_after_min_len(tiny, task):
    tok = tiny.tokenizer
    exs = task.examples("train")[:2]
    traj = sample(tiny.model, tok, [task.prompt(e) for e in exs], 3, task.sampling(train=True),
                  stop_id=task.stop_id(tok), generator=torch.Generator().manual_seed(0))
    assert int(traj.lengths.min()) >= 1 and int(traj.lengths.max()) <= 5
    with torch.no_grad():
        log_r = task.log_reward(tiny.model, tok, traj, exs)
    for b in range(len(traj)):
        assert torch.isfinite(log_r[b, 1: int(traj.lengths[b]) + 1]).all()
        assert (log_r[b, int(traj.lengths[b]) + 1:] == 0).all()


def test_predictions_match_explicit_forward_and_score(tiny, task):
    tok, model = tiny.tokenizer, tiny.model
    ex = task.examples("test")[1]
    texts = [" very good", " bad", " a story", " not happy", " the plot"]
    x = ids(tok, task.prompt(ex))
    want = []
    for t in texts:
        lp = {label: suffix_log_prob(model, x + ids(tok, t), ids(tok, f", so it is {label}.")) for label in LABELS}
        want.append("objective" if lp["objective"] > lp["subjective"] else "subjective")
    with torch.no_grad():
        assert task.predict(model, tok, ex, texts) == want
        got = task.score_with_model(model, tok, texts, ex)
    assert got["rationale_accuracy"] == pytest.approx(sum(w == ex.answer for w in want) / len(want))
    assert got["accuracy"] == float(vote(want) == ex.answer)
    assert task.score([" very good", "", " a b c"], ex) == {"rationale_words": 5 / 3, "empty": 1 / 3}


def test_vote_ties_go_to_subjective(task, monkeypatch):
    assert vote(["objective"] * 5 + ["subjective"] * 5) == "subjective"
    assert vote(["subjective"] * 5 + ["objective"] * 5) == "subjective"
    assert vote(["objective"] * 6 + ["subjective"] * 4) == "objective"
    assert vote(["subjective", "objective", "objective"]) == "objective"
    obj = next(e for e in task.examples("test") if e.answer == "objective")
    sub = next(e for e in task.examples("test") if e.answer == "subjective")
    monkeypatch.setattr(task, "predict", lambda *a: ["objective", "subjective"] * 5)
    assert task.score_with_model(None, None, ["z"] * 10, sub) == {"accuracy": 1.0, "rationale_accuracy": 0.5}
    assert task.score_with_model(None, None, ["z"] * 10, obj) == {"accuracy": 0.0, "rationale_accuracy": 0.5}


def test_splits_disjoint_nested_seeded_and_filtered():
    tasks = {n: Subjectivity(data=str(FIXTURE), n_labelled=n) for n in (10, 20, 50)}
    s10, s20, s50 = (tasks[n].splits for n in (10, 20, 50))
    assert [len(s50[k]) for k in ("train", "val", "test")] == [50, 8, 17]     # 86 unique: 20% test, 10% val
    assert s10["train"] == s20["train"][:10] and s20["train"] == s50["train"][:20]
    assert s10["test"] == s50["test"] and s10["val"] == s50["val"]
    texts = {k: [e.question for e in v] for k, v in s50.items()}
    for k, v in texts.items():
        assert len(v) == len(set(v)), k
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["val"]) & set(texts["test"])
    assert all(len(t.split()) < 25 for t in texts["train"])
    everything = [e.question for v in s50.values() for e in v]
    assert "the city council votes to close the public library ." not in everything    # listed under both labels
    assert Subjectivity(data=str(FIXTURE), n_labelled=50).splits == s50                  # seeded
    other = Subjectivity(data=str(FIXTURE), seed=1, n_labelled=50).splits
    assert [e.question for e in other["test"]] != texts["test"]


def test_data_folder_labels_and_registry():
    task = get_task("subj", data=str(FIXTURE))
    assert task.data_source == str(FIXTURE)
    plot = FIXTURE.joinpath(FILES["objective"]).read_text().splitlines()
    for ex in task.examples("test") + task.examples("train"):
        assert ex.answer == ("objective" if ex.question in plot else "subjective")
    assert {e.answer for e in task.examples("train")} == {"objective", "subjective"}
    builtin = get_task("subj")
    assert builtin.data_source.startswith("built-in sample (") and builtin.data_source.endswith("not SUBJ")
    assert len(builtin.examples("train")) == 10
    assert [get_task(n).n_labelled for n in ("subj20", "subj50")] == [20, 50]
    assert get_task("subj20").examples("train")[:10] == builtin.examples("train")
    assert task.training.reward_temperature == (1.2, 1.0, 150)
    assert task.training.behaviour_mix == (0.25, 0.25, 0.5) and task.training.buffer_capacity == 100
    for name in ("subj", "subj20", "subj50"):
        assert get_method("few_shot").applies_to(name) and get_method("zero_shot").applies_to(name)


def write_folder(root: Path, plot: bytes | None, quote: bytes | None) -> Path:
    root.mkdir()
    for name, content in ((FILES["objective"], plot), (FILES["subjective"], quote)):
        if content is not None:
            (root / name).write_bytes(content)
    return root


GOOD = FIXTURE.joinpath(FILES["objective"]).read_bytes()


@pytest.mark.parametrize("plot, quote, message", [
    (GOOD, None, "quote.tok.gt9.5000 is missing"),
    (None, GOOD, "plot.tok.gt9.5000 is missing"),
    (b"", GOOD, "plot.tok.gt9.5000 has no sentences"),
    (GOOD, b"\n  \n", "quote.tok.gt9.5000 has no sentences"),
    (GOOD, b"fine line .\nanother line .\ncaf\xe9 au lait .\n", "quote.tok.gt9.5000 line 3 is not UTF-8"),
    (b"one .\n", b"two .\n", "2 distinct sentences give 0 test, 0 val"),
])
def test_bad_data_errors(tmp_path, plot, quote, message):
    folder = write_folder(tmp_path / "d", plot, quote)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Subjectivity(data=str(folder))


def test_missing_folder_and_blank_lines(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Subjectivity(data=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="n_labelled must be >= 1"):
        Subjectivity(data=str(FIXTURE), n_labelled=0)
    quote = FIXTURE.joinpath(FILES["subjective"]).read_bytes()
    folder = write_folder(tmp_path / "d", GOOD.replace(b"\n", b"\n \n", 3), quote)   # blank lines are skipped
    pairs = lambda t: {k: [(e.question, e.answer) for e in v] for k, v in t.splits.items()}  # noqa: E731
    assert pairs(Subjectivity(data=str(folder))) == pairs(Subjectivity(data=str(FIXTURE)))


def test_prompted_classifier_is_the_papers_label_comparison(tiny, task):
    tok, model = tiny.tokenizer, tiny.model
    exs = task.examples("test")[:3]
    traj = task.prompted_classifier(tiny, exs, 2)
    for i, ex in enumerate(exs):
        prompt = task.classifier_prompt(ex, 2)
        assert prompt.count("\n") == 2 and prompt.endswith(f'"{ex.question}" It is')
        demo = task.examples("train")[0]
        assert prompt.startswith(f'Classify this movie review as objective or subjective: "{demo.question}" It is '
                                 f'{demo.answer}.\n')
        lp = {label: suffix_log_prob(model, ids(tok, prompt), ids(tok, f" {label}")) for label in LABELS}
        assert traj.texts[i] == (" objective" if lp["objective"] > lp["subjective"] else " subjective")
        assert traj.group.tolist() == list(range(len(exs)))


def test_harness_zero_and_few_shot_rows(tmp_path, monkeypatch):
    from gfnbench.runner import run

    out = run("subj", "zero_shot", 0, profile="smoke", results_dir=str(tmp_path))
    record = json.loads((out / "record.json").read_text())
    assert 0.0 <= record["metrics"]["test"]["accuracy"] <= 1.0
    assert record["data"].startswith("built-in sample")
    samples = read_samples(out)
    assert len(samples) == 3 and {s["text"] for s in samples} <= {" objective", " subjective"}
    # few-shot uses all n labelled demos (10 here: ~890 tiny-tokenizer tokens, inside the tiny llama's 2048)
    out = run("subj", "few_shot", 0, profile="smoke", results_dir=str(tmp_path))
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["method"]["shots"] == 10 and "accuracy" in record["metrics"]["test"]
    monkeypatch.setattr(Subjectivity, "default_labelled", 2)
    out = run("subj", "few_shot", 1, profile="smoke", results_dir=str(tmp_path))
    record = json.loads((out / "record.json").read_text())
    assert record["config"]["method"]["shots"] == 2 and "accuracy" in record["metrics"]["test"]


def test_harness_gflownet_row(tmp_path):
    from gfnbench.runner import run

    out = run("subj", "gflownet", 0, profile="smoke", results_dir=str(tmp_path))
    metrics = json.loads((out / "record.json").read_text())["metrics"]["test"]
    assert {"accuracy", "rationale_accuracy", "rationale_words", "logp_ref"} <= set(metrics)


def test_wishful_seeds_are_cut_at_the_first_non_word_token(tiny, task, monkeypatch):
    import gfnbench.tasks.subj as subj

    tok = tiny.tokenizer
    # the tiny tokenizer splits words into pieces (" very" -> " ", "v", "er", "y"), as SmolLM2 splits " 3"
    texts = [" very good, fun", ". nice", " great", " great", " a b c ", " x\ny"]
    states = [ids(tok, t) for t in texts]
    fake = from_rows(["x"] * 6, [0] * 6, [[1]] * 6, states, [[True] * len(s) for s in states], [True] * 6,
                     [[0.0] * len(s) for s in states], [[0.0] * (len(s) + 1) for s in states],
                     [tok.decode(s) for s in states], tok.pad_token_id)
    asked = {}
    monkeypatch.setattr(subj, "sample", lambda model, tk, prompts, n, cfg, **kw: asked.update(p=prompts, n=n) or fake)
    ex = task.examples("train")[0]
    assert task.buffer_seeds(tiny.model, tok, ex) == [" very good", " great", " a b c", " x"]
    assert asked == {"p": [f"{task.prompt(ex)} {ex.answer} because it is"], "n": subj.WISHFUL_SEEDS}


def test_gflownet_buffer_starts_with_scored_wishful_rationales(task):
    from gfnbench.gflownet import GFlowNetConfig, GFlowNetModule
    from gfnbench.models import build_tiny

    lm = build_tiny("llama")
    exs = task.examples("train")[:2]
    module = GFlowNetModule(task, lm, GFlowNetConfig(samples_per_prompt=4, dedup_tol=0.1), exs, seed=0)
    added = module.seed_buffer()
    items = [(ex, item) for ex in exs for item in module.buffer.items(task.prompt(ex))]
    assert added == len(items) > 0
    for ex, item in items[:4]:
        tokens, acts, stopped, log_r = item.payload
        assert stopped and all(acts) and 1 <= len(tokens) <= task.max_len
        traj = from_rows([task.prompt(ex)], [0], [ids(lm.tokenizer, task.prompt(ex))], [tokens], [acts], [True],
                         [[0.0] * len(tokens)], [[0.0] * (len(tokens) + 1)], [lm.tokenizer.decode(tokens)],
                         lm.tokenizer.pad_token_id)
        with torch.no_grad():
            want = task.log_reward(lm.model, lm.tokenizer, traj, [ex])[0, len(tokens)]
        assert item.log_reward == pytest.approx(float(want), abs=1e-4)


def test_subj_evaluates_at_least_40_questions_per_split():
    from gfnbench.evaluation import eval_questions
    from gfnbench.profiles import get_profile
    from gfnbench.tasks.arith import Arithmetic

    subj = Subjectivity()
    cpu = get_profile("cpu")
    assert eval_questions(cpu, subj) >= 40 == len(subj.examples("test"))   # the whole built-in test split
    assert eval_questions(cpu, Arithmetic()) == 100 == len(Arithmetic().examples("test_3op"))   # the paper's 100
    assert eval_questions(replace(cpu, eval_questions=8), subj) == 40   # the floor lifts a smaller cap
    assert eval_questions(get_profile("paper"), subj) is None and eval_questions(get_profile("smoke"), subj) == 3
