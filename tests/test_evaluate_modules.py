"""gfnbench's metrics as `evaluate` modules: `evaluate.load(<folder>)` gives the harness's numbers.

For every metric: the module loaded by path gives exactly (==) the number of the gfnbench function the tasks call,
and at least one value matches an independent computation (by hand, or a reference library called directly).
"""
import itertools
import json
import math
import os
import subprocess
import sys

import pytest

from gfnbench import metrics
from gfnbench.metrics import METRIC_NAMES, metric_path

evaluate = pytest.importorskip("evaluate")

HYPS = ["a cat sat on mat", "the the the the", "the cat sat on the mat", "", "Stocks dropped, sharply."]
REFS = ["the cat sat on the mat", "the cat sat on the mat", "the cat sat on the mat", "the cat",
        "The stock market fell sharply today."]
SENTENCES = ["A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply today.",
             "ok"]


@pytest.fixture(scope="module")
def load():
    """evaluate.load by path, as another project would (a fresh instance, not the harness's cached one)."""
    return lambda name: evaluate.load(str(metric_path(name)))


def test_every_module_is_a_folder_in_the_package_with_its_script():
    import gfnbench.metric_modules as pkg

    assert metrics.METRIC_MODULES.resolve() == pkg.FOLDER.resolve()
    assert sorted(p.name for p in pkg.FOLDER.iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert (metric_path(name) / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="no gfnbench metric module"):
        metric_path("sacrebleu")


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_module_info(load, name):
    module = load(name)
    assert isinstance(module, evaluate.Metric)
    assert module.description.strip() and module.citation.strip() and module.inputs_description.strip()
    assert "predictions" in (module.features if not isinstance(module.features, list) else module.features[0])
    assert metrics.load_metric(name) is metrics.load_metric(name)  # the harness loads each module once


def test_bleu_module(load):
    bleu = load("bleu")
    out = bleu.compute(predictions=HYPS, references=REFS)
    # the harness's function, pair by pair
    assert out["scores"] == [metrics.bleu4(h, r) for h, r in zip(HYPS, REFS)]
    assert out["bleu"] == sum(out["scores"]) / len(HYPS)
    # the signature of the BLEU used, in the result and in the module's description
    assert out["signature"] == metrics.bleu_signature()
    assert metrics.bleu_signature() in bleu.description
    # independent: sacrebleu directly, and one worked by hand (13a tokens; hyp 5, ref 6; matches 4/5, 2/4, 1/3,
    # 0/2 -> exp smoothing 1/4; BP = exp(1 - 6/5))
    import sacrebleu

    assert out["scores"] == pytest.approx([sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)],
                                          rel=1e-12)
    assert out["scores"][0] == pytest.approx(100 * math.exp(1 - 6 / 5) * (4 / 5 * 2 / 4 * 1 / 3 * 1 / 4) ** 0.25)
    assert out["scores"][2] == pytest.approx(100.0)


def test_gleu_module(load):
    gleu = load("gleu")
    out = gleu.compute(predictions=HYPS, references=REFS)
    assert out["scores"] == [metrics.gleu(h, r) for h, r in zip(HYPS, REFS)]
    assert out["gleu"] == sum(out["scores"]) / len(HYPS)
    # independent: nltk directly, and by hand
    from nltk.translate.gleu_score import sentence_gleu

    assert out["scores"] == pytest.approx([sentence_gleu([r.split()], h.split()) for h, r in zip(HYPS, REFS)],
                                          rel=1e-12)
    # hyp "the cat sat": 3 + 2 + 1 = 6 n-grams, all in ref "the cat sat down" (10 n-grams): min(6/6, 6/10)
    assert gleu.compute(predictions=["the cat sat"], references=["the cat sat down"])["gleu"] == pytest.approx(0.6)


def test_pass_at_k_module(load):
    pass_at_k = load("pass_at_k")
    items = [[True, False, False, True, False, False, False, False, False, False],   # n 10, c 2
             [False] * 10, [True] * 10, [False, True, False, False, True, True, False, False, True, False]]
    ks = [1, 2, 5, 10]
    out = pass_at_k.compute(predictions=items, k=ks)
    for k in ks:
        # the harness's function, item by item (arith's pass@k), averaged as the harness averages questions
        assert out[f"pass@{k}"] == sum(metrics.pass_at_k(len(s), sum(s), k) for s in items) / len(items)
        # independent: every k-subset of each item's samples enumerated
        brute = [sum(any(s[i] for i in sub) for sub in itertools.combinations(range(len(s)), k))
                 / math.comb(len(s), k) for s in items]
        assert out[f"pass@{k}"] == pytest.approx(sum(brute) / len(brute), rel=1e-12)
    assert pass_at_k.compute(predictions=[[True, False, False, False]], k=2) == {"pass@2": pytest.approx(0.5)}
    with pytest.raises(ValueError, match="0 < k <= n"):
        pass_at_k.compute(predictions=[[True, False]], k=[3])
    with pytest.raises(ValueError, match="0 < k <= n"):
        metrics.pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        metrics.pass_at_k(3, 4, 1)


def test_accuracy_module_majority_vote(load):
    accuracy = load("accuracy")
    # integer labels; None = an unparseable sample, which votes for "no answer"
    preds = [[3, 3, 5], [2, None, 7], [None, None, 4], [None, None], [8, 9, 9, 8], [4, None, 4]]
    refs = [3, 2, 4, 1, 8, 4]
    out = accuracy.compute(predictions=preds, references=refs)
    # by hand: votes 3 (2 of 3), 2 (three-way tie, first seen), None (2 no-answers beat the one 4), None,
    # 8 (tie 8/9, first seen), 4 (2 of 3) -> right on items 1, 2, 5, 6
    assert out["votes"] == [3, 2, None, None, 8, 4]
    assert out["accuracy"] == pytest.approx(4 / 6)
    # the harness's functions: majority_vote per item (as arith.score), and majority_vote_accuracy
    assert out["accuracy"] == metrics.mean([float(metrics.majority_vote(p) == r) for p, r in zip(preds, refs)])
    assert out["accuracy"] == metrics.majority_vote_accuracy(preds, refs)
    # string labels (subj) and plain accuracy (one prediction per item)
    labels = [["subjective", "objective", "objective"], ["subjective", "objective"]]  # a tie: first seen
    out = accuracy.compute(predictions=labels, references=["objective", "objective"])
    assert out == {"accuracy": 0.5, "votes": ["objective", "subjective"]}
    assert accuracy.compute(predictions=["a", "b", "c", "d"], references=["a", "b", "x", "y"])["accuracy"] == 0.5
    assert accuracy.compute(predictions=[1, 2, 3], references=[1, 0, 3])["accuracy"] == pytest.approx(2 / 3)
    # "3" and 3 are different labels: strings are never turned into integers
    assert accuracy.compute(predictions=[["3", "3"]], references=["3"])["votes"] == ["3"]


def test_diversity_module(load):
    diversity = load("diversity")
    out = diversity.compute(predictions=SENTENCES)
    assert set(out) == {"diversity", "distinct_1", "distinct_2"}
    assert out["diversity"] == metrics.diversity(SENTENCES)
    assert out["distinct_1"] == metrics.distinct_n(SENTENCES, 1)
    assert out["distinct_2"] == metrics.distinct_n(SENTENCES, 2)
    # independent: sentence-transformers' own encoding of the same local model, then cosines by hand
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(metrics.minilm_path()), device="cpu")
    e = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=True).double()
    pairs = list(itertools.combinations(range(len(SENTENCES)), 2))
    by_hand = 1 - sum(float(e[i] @ e[j]) for i, j in pairs) / len(pairs)
    assert out["diversity"] == pytest.approx(by_hand, abs=1e-5)
    # distinct-n by hand: "a b a b" | "a b c": unigrams 7, distinct 3; bigrams 5, distinct 3
    assert diversity.compute(predictions=["a b a b", "a b c"], distinct=[1, 2], embeddings=False) == \
        {"distinct_1": pytest.approx(3 / 7), "distinct_2": pytest.approx(3 / 5)}
    assert diversity.compute(predictions=["only one"], distinct=[])["diversity"] == 0.0  # no pairs


def test_bertscore_module(load):
    bertscore = load("bertscore")
    cands = ["A man plays the guitar.", "Stocks dropped.", "hello there",
             "A cat sleeps on the warm windowsill all afternoon."]
    refs = ["A man is playing a guitar.", "The stock market fell sharply today.", "hello there",
            "The kitten naps in the sun."]
    out = bertscore.compute(predictions=cands, references=refs)
    assert out["f1"] == metrics.bertscore_f1(cands, refs)
    assert str(metrics.minilm_path()) in out["hashcode"] and "L6_no-idf" in out["hashcode"]
    # independent: bert_score's functional API called directly with the same model, layer and no idf
    from bert_score import score

    p, r, f = score(cands, refs, model_type=str(metrics.minilm_path()), num_layers=6, idf=False, device="cpu")
    assert out["precision"] == pytest.approx(p.tolist(), abs=1e-6)
    assert out["recall"] == pytest.approx(r.tolist(), abs=1e-6)
    assert out["f1"] == pytest.approx(f.tolist(), abs=1e-6)
    assert out["f1"][2] == pytest.approx(1.0, abs=1e-4)  # a sentence against itself


def test_task_scores_equal_evaluate_modules(load):
    """The numbers a run records (task.score, averaged over questions) are what the modules give."""
    from gfnbench.tasks.arith import Arithmetic, extract_answer
    from gfnbench.tasks.continuation import Continuation
    from gfnbench.tasks.infill import Infill, for_scoring

    arith = Arithmetic(n_unlabelled=0, n_test=4)
    exs = arith.examples("test_3op")[:3]
    texts = [[f"... = {exs[0].answer}", f"= {exs[0].answer}.", "no number", "1 + 1 = 2"],
             ["x = 12345", "nothing", f"= {exs[1].answer}", "y = 12345"],
             ["nothing", "at all", "here", "!"]]
    scores = [arith.score(t, ex) for t, ex in zip(texts, exs)]
    preds = [[extract_answer(x) for x in t] for t in texts]
    refs = [ex.answer for ex in exs]
    assert metrics.mean([s["accuracy"] for s in scores]) == \
        load("accuracy").compute(predictions=preds, references=refs)["accuracy"]
    right = [[p == r for p in ps] for ps, r in zip(preds, refs)]
    out = load("pass_at_k").compute(predictions=right, k=[1])
    assert metrics.mean([s["pass@1"] for s in scores]) == out["pass@1"]

    infill = Infill()
    ex = infill.examples("test")[0]
    samples = [" She went home.", f" {ex.rationale}", " The end", "  a b c d e."]
    got = infill.score(samples, ex)
    hyps, ref = [for_scoring(t) for t in samples], for_scoring(ex.rationale)
    assert got["bleu4"] == load("bleu").compute(predictions=hyps, references=[ref] * len(hyps))["bleu"]
    assert got["gleu"] == load("gleu").compute(predictions=hyps, references=[ref] * len(hyps))["gleu"]
    f1 = load("bertscore").compute(predictions=hyps, references=[ref] * len(hyps))["f1"]
    assert got["bertscore_f1"] == sum(f1) / len(f1)
    assert got["diversity"] == load("diversity").compute(predictions=hyps)["diversity"]

    cont = Continuation()
    ex = cont.examples(cont.eval_splits[0])[0]
    samples = [" It rained all day.", " It rained all day.", " The dog barked at the mailman."]
    got = cont.score(samples, ex)
    clean = [t.strip().removesuffix(".").strip() for t in samples]
    out = load("diversity").compute(predictions=clean, distinct=[1, 2])
    assert (got["diversity"], got["distinct_1"], got["distinct_2"]) == \
        (out["diversity"], out["distinct_1"], out["distinct_2"])


_FRESH = """
import json, sys, evaluate
arg = json.loads(sys.argv[1])
paths, hyps, refs = arg["paths"], arg["hyps"], arg["refs"]
out = {}
out["bleu"] = evaluate.load(paths["bleu"]).compute(predictions=hyps, references=refs)
out["gleu"] = evaluate.load(paths["gleu"]).compute(predictions=hyps, references=refs)
out["accuracy"] = evaluate.load(paths["accuracy"]).compute(predictions=[[3, 3, 5], [None, 2, 7]], references=[3, 7])
out["pass_at_k"] = evaluate.load(paths["pass_at_k"]).compute(predictions=[[True, False, False, True]], k=[1, 2, 3])
out["diversity"] = evaluate.load(paths["diversity"]).compute(predictions=hyps, distinct=[1, 2], embeddings=False)
out["bertscore_loads"] = type(evaluate.load(paths["bertscore"])).__name__
print(json.dumps(out))
"""


def test_load_by_path_in_a_fresh_cache_offline(tmp_path):
    """Another process, an empty HF_HOME, the hub unreachable: loading by path still works, same numbers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9",
               OMP_NUM_THREADS="1")
    paths = {name: str(metric_path(name)) for name in METRIC_NAMES}
    arg = json.dumps({"paths": paths, "hyps": HYPS, "refs": REFS})
    res = subprocess.run([sys.executable, "-c", _FRESH, arg], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["bleu"]["scores"] == [metrics.bleu4(h, r) for h, r in zip(HYPS, REFS)]
    assert out["bleu"]["signature"] == metrics.bleu_signature()
    assert out["gleu"]["scores"] == [metrics.gleu(h, r) for h, r in zip(HYPS, REFS)]
    assert out["accuracy"] == {"accuracy": 0.5, "votes": [3, None]}     # None outvotes 2 and 7: first seen
    assert out["pass_at_k"] == {f"pass@{k}": metrics.pass_at_k(4, 2, k) for k in (1, 2, 3)}
    assert out["diversity"] == {"distinct_1": metrics.distinct_n(HYPS, 1), "distinct_2": metrics.distinct_n(HYPS, 2)}
    assert out["bertscore_loads"] == "GfnbenchBertScore"
    # evaluate copied each script into the fresh modules cache
    copied = {p.name for p in (tmp_path / "hf" / "modules").rglob("*.py")}
    assert {f"{name}.py" for name in METRIC_NAMES} <= copied
