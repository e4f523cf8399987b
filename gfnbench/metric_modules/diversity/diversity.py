"""Diversity of a set of texts: 1 - mean pairwise cosine of MiniLM embeddings, and distinct-n."""
import datasets
import evaluate

from gfnbench.metrics import compute_distinct_n, compute_diversity

_CITATION = """\
@inproceedings{hu2024amortizing,
  title = {Amortizing intractable inference in large language models},
  author = {Hu, Edward J. and Jain, Moksh and Elmoznino, Eric and Kaddar, Younesse and Lajoie, Guillaume and
            Bengio, Yoshua and Malkin, Nikolay},
  booktitle = {International Conference on Learning Representations},
  year = {2024}
}
@inproceedings{reimers-2019-sentence-bert,
  title = {Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks},
  author = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Proceedings of EMNLP-IJCNLP},
  year = {2019}
}
@inproceedings{li-etal-2016-diversity,
  title = {A Diversity-Promoting Objective Function for Neural Conversation Models},
  author = {Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill},
  booktitle = {Proceedings of NAACL-HLT},
  year = {2016}
}
"""

_DESCRIPTION = """\
Diversity of the set of predictions (e.g. the samples drawn for one prompt), as in Hu et al. 2024: 1 minus the mean
pairwise cosine similarity of their sentence embeddings from the local all-MiniLM-L6-v2 (mean pooling over real
tokens, then L2, input cut at 256 tokens, as sentence-transformers does for this model); 0.0 for fewer than two
texts. Also distinct-n: the share of distinct whitespace n-grams, n-grams not crossing text boundaries.
This is gfnbench's continuation and infill diversity.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of str, the set of texts.
    distinct: the n of each distinct-n to report (default [1, 2]; [] for none).
    embeddings: whether to compute the embedding diversity (default True; False skips the model).
Returns:
    diversity: 1 - mean pairwise cosine of the MiniLM embeddings (when embeddings=True),
    distinct_<n>: share of distinct n-grams, for each n in `distinct`.
Examples:
    >>> diversity = evaluate.load("path/to/gfnbench/metric_modules/diversity")
    >>> diversity.compute(predictions=["a b a b", "a b c"], distinct=[1, 2], embeddings=False)
    {'distinct_1': 0.42857142857142855, 'distinct_2': 0.6}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GfnbenchDiversity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2310.04363"],
        )

    def _compute(self, predictions, distinct=(1, 2), embeddings=True):
        out = {"diversity": compute_diversity(predictions)} if embeddings else {}
        for n in distinct:
            out[f"distinct_{n}"] = compute_distinct_n(predictions, n)
        return out
