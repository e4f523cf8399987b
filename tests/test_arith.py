import pytest
import torch

from gfnbench.metrics import majority_vote
from gfnbench.sampling import SamplingConfig, sample
from gfnbench.tasks import get_task
from gfnbench.tasks.arith import calculator, extract_answer, generate_splits, rationale


def test_splits_are_disjoint_and_sized():
    splits = generate_splits(0)
    questions = {name: [e.question for e in exs] for name, exs in splits.items()}
    for name, qs in questions.items():
        assert len(qs) == len(set(qs)), f"duplicate question inside {name}"
    names = list(questions)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(questions[a]) & set(questions[b]), f"{a} and {b} share questions"
    assert sum(e.rationale is not None for e in splits["train"]) == 10
    assert len(splits["train"]) >= 1010
    assert {len(e.question.split()) for e in splits["test_3op"]} == {5}
    assert {len(e.question.split()) for e in splits["test_4op"]} == {7}
    assert {len(e.question.split()) for e in splits["test_5op"]} == {9}
    assert generate_splits(0)["test_3op"][0] == splits["test_3op"][0]


def test_answers_are_left_to_right():
    task = get_task("arith")
    for ex in task.examples("test_5op")[:50]:
        toks = ex.question.split()
        value = int(toks[0])
        for op, x in zip(toks[1::2], toks[2::2]):
            value = value + int(x) if op == "+" else value - int(x)
        assert ex.answer == str(value)
    assert rationale([6, 0, 4, 8], ["-", "-", "-"]) == "6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6"


def test_calculator_two_terms_and_longer():
    assert calculator(" 6 - 0 =") == " 6"
    assert calculator(" 6 - 0 = 6, 6 - 4 =") == " 2"
    assert calculator(" 2 - 8 = -6, -6 - 7 =") == " -13"
    # a limited tool: only the last two terms are evaluated (the official code dropped one more operand)
    assert calculator(" 5 + 3 + 4 =") == " 7"
    assert calculator(" 6 - 0") is None
    assert calculator(" 6 - =") is None


def test_answer_extraction_and_majority_vote():
    assert extract_answer(" 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6") == "-6"
    assert extract_answer(" 6 - 0 = 6, 6 - 4 = 2, 2 - 8 = -6.") == "-6"    # the answer string's "." may start
    assert extract_answer(" 2 + 3 = 5 = 5") == "5"                           # a repeated result: still the last
    # no stated result: echoes, trailing operands, decimals, repeats after the result, no "=" at all
    for no_answer in (" 6 + 4", " 5. 5", " 12", " 5. 5 + 7", " 2 + 3 = 5, 5 - 1", " 2 + 3 = 5, 5 -",
                      " 7 = 2.5", " 2 + 3 = 5 5", " 2 + 3 =", " hello", ""):
        assert extract_answer(no_answer) is None, no_answer
    # every committed gold rationale of every split states its answer
    for split in ("train", "val", "test_3op", "test_4op", "test_5op"):
        for ex in generate_splits()[split]:
            if ex.rationale:
                assert extract_answer(f" {ex.rationale}") == ex.answer
    assert majority_vote(["3", "4", "4", "3", None]) == "3"                  # tie 3/4: first seen
    assert majority_vote(["3", "4", "4", "3", None, None, None]) is None     # 3 samples without an answer win
    assert majority_vote(["5", None, "5"]) == "5"
    assert majority_vote([None, None]) is None
    task = get_task("arith")
    ex = task.examples("test_3op")[0]
    good = f" {ex.rationale}"
    assert task.score([good, good, " 1 + 1 = 99"], ex) == {"accuracy": 1.0, "pass@1": pytest.approx(2 / 3),
                                                           "valid": 1.0, "distinct_correct": 1.0}
    assert task.score([" 1 + 1 = 99", " 1 + 1 = 99", good], ex)["accuracy"] == 0.0
    # two outputs that state no result outvote one right rationale, and count as invalid
    echo = f" {ex.question.split()[0]}. {ex.question.split()[0]}"
    scored = task.score([echo, " 6 + 4", good], ex)
    assert scored["accuracy"] == 0.0 and scored["valid"] == pytest.approx(1 / 3)
    assert scored["pass@1"] == pytest.approx(1 / 3)


def test_distinct_correct_counts_different_texts_that_reach_the_answer():
    """By hand: 2 + 3 * 4 (left to right) = 20. Two spellings of one rationale (spaces only) count once, another
    route to 20 counts, a wrong answer and a text without '=' count nothing."""
    from gfnbench.tasks.arith import distinct_correct

    texts = [" 2 + 3 = 5, 5 * 4 = 20", "  2 + 3 = 5,  5 * 4 = 20 ", " 5 * 4 = 20", " 2 + 3 = 5, 5 * 4 = 21",
             " 2 + 3 * 4 20"]
    answers = [extract_answer(t) for t in texts]
    assert answers == ["20", "20", "20", "21", None]
    assert distinct_correct(texts, answers, "20") == 2
    assert distinct_correct(texts, answers, "21") == 1
    assert distinct_correct([], [], "20") == 0


def test_reward_is_the_log_likelihood_of_rationale_and_answer_after_every_prefix(tiny):
    task = get_task("arith")
    tok, model = tiny.tokenizer, tiny.model
    exs = task.examples("test_3op")[:2]
    traj = sample(model, tok, [task.prompt(e) for e in exs], 2, SamplingConfig(max_len=10),
                  stop_id=task.stop_id(tok), allowed=task.allowed_tokens(tok), tool=task.tool,
                  generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = task.log_reward(model, tok, traj, exs)
    ends = traj.state_ends()
    for b in range(len(traj)):
        ex = exs[int(traj.group[b])]
        ctx = tok(task.reward_context(ex), add_special_tokens=False)["input_ids"]
        suffix = tok(f". The answer is {ex.answer}.", add_special_tokens=False)["input_ids"]
        state = traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist()
        for j in range(int(traj.lengths[b]) + 1):
            if j < task.min_len:
                assert got[b, j] == float("-inf")
                continue
            seq = ctx + state[: int(ends[b, j])] + suffix
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([seq])).logits[0], -1)
            want = sum(float(lp[i - 1, seq[i]]) for i in range(len(ctx), len(seq)))
            assert abs(float(got[b, j]) - want) < 1e-3


def test_allowed_tokens_are_arithmetic_only(tiny):
    task = get_task("arith")
    mask = task.allowed_tokens(tiny.tokenizer)
    for i in mask.nonzero().flatten().tolist():
        text = tiny.tokenizer.decode([i])
        assert i == tiny.eos_id or set(text) <= set(" 0123456789+-=,.")
    assert not mask[tiny.tokenizer("the", add_special_tokens=False)["input_ids"][0]]


def test_curve_probe_is_greedy_accuracy_on_a_fixed_val_slice(monkeypatch):
    """The probe's number equals accuracy computed from an independent greedy decode of the same questions."""
    from gfnbench.models import load_model
    from gfnbench.sampling import sample
    from gfnbench.tasks.arith import extract_answer, operand_count

    task, lm = get_task("arith"), load_model("tiny")
    got = task.curve_metrics(lm.model, lm.tokenizer)["val_greedy_accuracy"]
    val = task.probe_examples()
    assert [operand_count(e) for e in val] == [3, 4] * (task.probe_questions // 2)     # both kinds, alternating
    assert len({e.id for e in val}) == task.probe_questions and set(val) <= set(task.examples("val"))
    traj = sample(lm.model, lm.tokenizer, [task.prompt(e) for e in val], 1,
                  task.sampling(train=False, greedy=True), stop_id=task.stop_id(lm.tokenizer),
                  allowed=task.allowed_tokens(lm.tokenizer), tool=task.tool)
    want = sum(extract_answer(t) == e.answer for t, e in zip(traj.texts, val)) / len(val)
    assert got == want and 0.0 <= got <= 1.0
    # a fake policy that always writes the right rationale scores 1: decode is replaced by the gold text
    monkeypatch.setattr("gfnbench.tasks.arith.sample", lambda *a, **k: type("T", (), {"texts": [
        f" {e.rationale}." for e in val]})())
    assert task.curve_metrics(lm.model, lm.tokenizer)["val_greedy_accuracy"] == 1.0


def test_labelled_problems_are_drawn_as_often_as_the_official_config():
    """Weights 1 (labelled) and 0.2 (unlabelled): 10 / (10 + 0.2 * 1000) = 4.76% of prompts are labelled."""
    from gfnbench.policy import seeded_prompt_loader

    task = get_task("arith")
    train = task.examples("train")
    loader = seeded_prompt_loader(len(train), 1, 20_000, seed=0, weights=task.prompt_weights(train))
    drawn = [int(i) for batch in loader for i in batch]
    share = sum(bool(train[i].meta["labelled"]) for i in drawn) / len(drawn)
    assert share == pytest.approx(10 / 210, abs=0.005)
    again = [int(i) for batch in seeded_prompt_loader(len(train), 1, 20_000, 0, task.prompt_weights(train))
             for i in batch]
    assert again == drawn
