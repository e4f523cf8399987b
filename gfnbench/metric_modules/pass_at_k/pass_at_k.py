"""Unbiased pass@k (Chen et al. 2021) from whether each of an item's n samples is right."""
import datasets
import evaluate

from gfnbench.metrics import compute_pass_at_k

_CITATION = """\
@article{chen2021evaluating,
  title = {Evaluating Large Language Models Trained on Code},
  author = {Chen, Mark and Tworek, Jerry and Jun, Heewoo and Yuan, Qiming and others},
  journal = {arXiv preprint arXiv:2107.03374},
  year = {2021}
}
"""

_DESCRIPTION = """\
Unbiased pass@k: for an item with n samples of which c are right, 1 - C(n - c, k) / C(n, k), the chance that k of
the n samples drawn without replacement hold a right one; averaged over items. Every item needs n >= k.
This is gfnbench's arith pass@k.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per item, a list of bools: whether each sample is right.
    k: an int or a list of ints (default [1]).
Returns:
    pass@<k>: mean pass@k over the items, for each k.
Examples:
    >>> pass_at_k = evaluate.load("path/to/gfnbench/metric_modules/pass_at_k")
    >>> pass_at_k.compute(predictions=[[True, False, False, False]], k=[1, 2])
    {'pass@1': 0.25, 'pass@2': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GfnbenchPassAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("bool"))}),
            reference_urls=["https://arxiv.org/abs/2107.03374"],
        )

    def _compute(self, predictions, k=(1,)):
        ks = [k] if isinstance(k, int) else list(k)
        if not predictions:
            raise ValueError("pass@k of no items")
        return {f"pass@{kk}": sum(compute_pass_at_k(len(s), sum(s), kk) for s in predictions) / len(predictions)
                for kk in ks}
