"""Accuracy, with a majority vote over sampled labels when an item has several."""
import datasets
import evaluate

from gfnbench.metrics import compute_vote_accuracy

_CITATION = """\
@inproceedings{wang2023selfconsistency,
  title = {Self-Consistency Improves Chain of Thought Reasoning in Language Models},
  author = {Wang, Xuezhi and Wei, Jason and Schuurmans, Dale and Le, Quoc and Chi, Ed and Narang, Sharan and
            Chowdhery, Aakanksha and Zhou, Denny},
  booktitle = {International Conference on Learning Representations},
  year = {2023}
}
"""

_DESCRIPTION = """\
Share of items whose predicted label equals the reference. An item's prediction is either one label (plain
accuracy) or the list of labels sampled for it, reduced by majority vote: the most frequent label, ties going to
the one seen first. An unparseable sample (None) votes for "no answer", and an item whose vote is None is wrong.
Labels are strings or integers. This is gfnbench's arith and subj accuracy (majority vote of 10 samples).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per item, a label or a list of sampled labels (str or int; None for an unparseable sample).
    references: per item, the right label.
Returns:
    accuracy: share of items whose (voted) label equals the reference,
    votes: the voted label of every item.
Examples:
    >>> accuracy = evaluate.load("path/to/gfnbench/metric_modules/accuracy")
    >>> accuracy.compute(predictions=[[3, 3, 5], [None, 2, 7]], references=[3, 7])
    {'accuracy': 0.5, 'votes': [3, None]}
"""

_VOTED = [datasets.Features({"predictions": datasets.Sequence(datasets.Value(t)), "references": datasets.Value(t)})
          for t in ("string", "int64")]
_SINGLE = [datasets.Features({"predictions": datasets.Value(t), "references": datasets.Value(t)})
           for t in ("string", "int64")]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GfnbenchAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_VOTED + _SINGLE,  # string options first: an int64 option would turn "3" into 3
            reference_urls=["https://arxiv.org/abs/2203.11171"],
        )

    def _compute(self, predictions, references):
        accuracy, votes = compute_vote_accuracy(predictions, references)
        return {"accuracy": accuracy, "votes": votes}
