"""Sentence BLEU (sacrebleu, 0-100) of each prediction against its reference: gfnbench's infill BLEU-4."""
import datasets
import evaluate

from gfnbench.metrics import bleu_signature, compute_bleu

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu,
  title = {{BLEU}: a Method for Automatic Evaluation of Machine Translation},
  author = {Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle = {Proceedings of ACL},
  year = {2002},
  pages = {311--318}
}
@inproceedings{post-2018-call,
  title = {A Call for Clarity in Reporting {BLEU} Scores},
  author = {Post, Matt},
  booktitle = {Proceedings of the Third Conference on Machine Translation},
  year = {2018},
  pages = {186--191}
}
"""

_DESCRIPTION = """\
Sentence-level BLEU-4 from sacrebleu on its 0-100 scale, one reference per prediction, scored pair by pair
(sacrebleu's BLEU with effective_order=True, as sacrebleu.sentence_bleu: 13a tokenizer, exp smoothing), then
averaged. This is gfnbench's infill BLEU-4.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, the hypotheses.
    references: list of str, one reference per hypothesis.
Returns:
    bleu: mean of the sentence BLEU scores (0-100),
    scores: the sentence BLEU of every pair, in order,
    signature: sacrebleu's signature of the configuration used.
Examples:
    >>> bleu = evaluate.load("path/to/gfnbench/metric_modules/bleu")
    >>> round(bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])["bleu"], 6)
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GfnbenchBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=f"{_DESCRIPTION}sacrebleu signature: {bleu_signature()}\n",
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319/"],
        )

    def _compute(self, predictions, references):
        scores = compute_bleu(predictions, references)
        return {"bleu": sum(scores) / len(scores) if scores else 0.0, "scores": scores,
                "signature": bleu_signature()}
