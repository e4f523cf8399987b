"""Sentence GLEU (nltk, 0-1) of each prediction against its reference: gfnbench's infill GLEU."""
import datasets
import evaluate

from gfnbench.metrics import compute_gleu

_CITATION = """\
@article{wu2016google,
  title = {Google's Neural Machine Translation System: Bridging the Gap between Human and Machine Translation},
  author = {Wu, Yonghui and Schuster, Mike and Chen, Zhifeng and Le, Quoc V. and Norouzi, Mohammad and others},
  journal = {arXiv preprint arXiv:1609.08144},
  year = {2016}
}
"""

_DESCRIPTION = """\
Sentence-level GLEU (Wu et al. 2016) from nltk.translate.gleu_score.sentence_gleu: the minimum of n-gram precision
and recall over n = 1..4, on whitespace tokens, 0-1 scale, one reference per prediction, then averaged. This is
gfnbench's infill GLEU.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, the hypotheses.
    references: list of str, one reference per hypothesis.
Returns:
    gleu: mean of the sentence GLEU scores (0-1),
    scores: the sentence GLEU of every pair, in order.
Examples:
    >>> gleu = evaluate.load("path/to/gfnbench/metric_modules/gleu")
    >>> gleu.compute(predictions=["the cat sat"], references=["the cat sat down"])["gleu"]
    0.6
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GfnbenchGleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://www.nltk.org/api/nltk.translate.gleu_score.html"],
            reference_urls=["https://arxiv.org/abs/1609.08144"],
        )

    def _compute(self, predictions, references):
        scores = compute_gleu(predictions, references)
        return {"gleu": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
