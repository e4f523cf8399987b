"""Text metrics against values worked out by hand or by an independent computation."""
import math

import pytest
import sacrebleu
import torch

from gfnbench import metrics


def test_minilm_path_holds_the_model():
    path = metrics.minilm_path()
    assert path.is_dir()
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_distinct_n_hand_counted():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b | a b c -> 7 in all, distinct {a, b, c} = 3
    assert metrics.distinct_n(texts, 1) == pytest.approx(3 / 7)
    # bigrams: (a b)(b a)(a b) | (a b)(b c) -> 5 in all, distinct {ab, ba, bc} = 3; none spans the two texts
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 5)
    # trigrams: (a b a)(b a b) | (a b c) -> 3, all distinct
    assert metrics.distinct_n(texts, 3) == pytest.approx(1.0)
    assert metrics.distinct_n(texts, 5) == 0.0  # no text has 5 tokens
    assert metrics.distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        metrics.distinct_n(texts, 0)


def test_pairwise_diversity_hand_worked():
    assert metrics.pairwise_diversity(torch.eye(4)) == pytest.approx(1.0)  # orthogonal: every cosine 0
    assert metrics.pairwise_diversity(torch.ones(3, 5)) == pytest.approx(0.0)  # identical: every cosine 1
    # v1 = (1, 0), v2 = (0, 1), v3 = (3, 3) (not unit: cosine must normalise)
    # cos12 = 0, cos13 = 3 / (1 * 3*sqrt2) = 1/sqrt2, cos23 = 1/sqrt2 -> mean = (2/sqrt2) / 3 = sqrt2 / 3
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    assert metrics.pairwise_diversity(v) == pytest.approx(1 - math.sqrt(2) / 3)
    # no pairs -> 0.0 by convention
    assert metrics.pairwise_diversity(torch.ones(1, 384)) == 0.0
    assert metrics.pairwise_diversity(torch.empty(0, 384)) == 0.0


SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
    "ok",
]


def test_embed_matches_hand_mean_pooling():
    from transformers import AutoModel, AutoTokenizer

    emb = metrics.embed(SENTENCES, batch_size=3)  # two batches, different padding
    assert emb.shape == (len(SENTENCES), 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)

    # independent: one sentence at a time (no padding), plain mean over its tokens, then L2
    tok = AutoTokenizer.from_pretrained(metrics.minilm_path())
    model = AutoModel.from_pretrained(metrics.minilm_path()).eval()
    with torch.no_grad():
        for k, s in enumerate(SENTENCES):
            hidden = model(**tok(s, return_tensors="pt")).last_hidden_state[0]
            ref = hidden.mean(0)
            ref = ref / ref.norm()
            assert torch.allclose(emb[k], ref, atol=1e-5), s


def test_embed_semantics():
    e = metrics.embed(["A man is playing a guitar.", "A man is playing a guitar.", *SENTENCES[1:3]])
    assert float(e[0] @ e[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(e[0] @ e[2]) > float(e[0] @ e[3])  # paraphrase closer than unrelated
    assert metrics.embed([]).shape == (0, 384)


def test_diversity():
    assert metrics.diversity(["the same sentence.", "the same sentence."]) == pytest.approx(0.0, abs=1e-5)
    assert metrics.diversity(SENTENCES[:3]) > metrics.diversity(SENTENCES[:2])


def test_bleu4():
    assert metrics.bleu4("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    hyp, ref = "a cat sat on mat", "the cat sat on the mat"
    # by hand, 13a tokens: hyp 5, ref 6
    # 1-grams: cat sat on mat match -> 4/5; 2-grams: "cat sat" "sat on" -> 2/4; 3-grams: "cat sat on" -> 1/3;
    # 4-grams: 0/2, exp smoothing replaces it with 1 / (2^1 * 2) = 1/4
    # BP = exp(1 - 6/5); BLEU = 100 * BP * (4/5 * 2/4 * 1/3 * 1/4) ** (1/4)
    by_hand = 100 * math.exp(1 - 6 / 5) * (4 / 5 * 2 / 4 * 1 / 3 * 1 / 4) ** 0.25
    assert metrics.bleu4(hyp, ref) == pytest.approx(by_hand)
    assert metrics.bleu4(hyp, ref) == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score)
    other = ("the the the the", "the cat sat on the mat")
    assert metrics.bleu4(*other) == pytest.approx(sacrebleu.sentence_bleu(other[0], [other[1]]).score)
    assert metrics.bleu4("", "the cat") == 0.0


def test_bleu_signature():
    sig = metrics.bleu_signature()
    for part in ("nrefs:1", "tok:13a", "smooth:exp", "eff:yes", f"version:{sacrebleu.__version__}"):
        assert part in sig


def test_gleu_hand_worked():
    assert metrics.gleu("the cat sat", "the cat sat") == pytest.approx(1.0)
    # hyp "the cat sat": 3 + 2 + 1 = 6 n-grams (n = 1..4); ref "the cat sat down": 4 + 3 + 2 + 1 = 10;
    # all 6 hyp n-grams occur in ref -> min(6/6, 6/10) = 0.6
    assert metrics.gleu("the cat sat", "the cat sat down") == pytest.approx(0.6)
    # hyp "the dog sat": 6 n-grams, matches "the" "sat" -> 2; ref "the cat sat": 6 -> min(2/6, 2/6)
    assert metrics.gleu("the dog sat", "the cat sat") == pytest.approx(1 / 3)


def test_bertscore_f1():
    a = ("A man is playing a guitar.", "A man is playing a guitar.")
    b = ("Someone is strumming a guitar.", "A man is playing a guitar.")
    c = ("The stock market fell sharply today.", "A man is playing a guitar.")
    f_same, f_para, f_unrel = metrics.bertscore_f1(*zip(a, b, c))
    assert f_same == pytest.approx(1.0, abs=1e-4)
    assert f_unrel < f_para < f_same
    # pairs stay aligned in a batch (torchmetrics 1.9 gets this wrong): each pair alone gives the same number;
    # distinct references and lengths, so a shuffled candidate or reference would change the scores
    pairs = [
        ("A man plays the guitar.", "A man is playing a guitar."),
        ("Stocks dropped.", "The stock market fell sharply today."),
        ("hello there", "hello there"),
        ("A cat sleeps on the warm windowsill all afternoon.", "The kitten naps in the sun."),
    ]
    batch = metrics.bertscore_f1([p[0] for p in pairs], [p[1] for p in pairs])
    alone = [metrics.bertscore_f1([p[0]], [p[1]])[0] for p in pairs]
    assert len(set(round(x, 3) for x in alone)) == len(pairs)
    assert batch == pytest.approx(alone, abs=1e-5)
    assert metrics.bertscore_f1([], []) == []
    with pytest.raises(ValueError):
        metrics.bertscore_f1(["x", "y"], ["x"])


def test_pass_at_k_equals_brute_force_over_subsets():
    import itertools

    from gfnbench.metrics import pass_at_k

    for n, c, k in [(10, 3, 1), (10, 3, 5), (6, 0, 2), (6, 6, 3), (7, 2, 6)]:
        samples = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        expected = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(expected)
    with pytest.raises(ValueError, match="0 < k <= n"):
        pass_at_k(3, 1, 4)
