"""How tables and plots name and order things for a reader: human metric names, direction arrows and the fixed
row order of the methods. One mapping, so a table, its LaTeX twin and its figure always agree.

A leaf (standard library only): tables, plots and the leaderboard import it, it imports none of them.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Rows by family, then within a family from simplest to most involved: base decoding, prompting, supervised,
# reward-maximising RL, the GFlowNet family. Methods not listed (custom files) follow in order of first appearance.
METHOD_ORDER = ("greedy", "temperature", "tempered", "nucleus", "beam", "diverse_beam",
                "zero_shot", "few_shot",
                "sft",
                "ppo", "grpo",
                "flowrl", "tb_vargrad", "gflownet", "gflownet_tb", "gflownet_mstep")

# metric identifier (as records hold it) -> the name a reader sees. Unlisted metrics are shown as their identifier.
METRIC_LABELS = {
    "tv_exact": "exact TV",
    "tv_sampled": "sampled TV",
    "js_exact": "exact JS",
    "kl_target_policy_exact": "exact KL(target ‖ π)",
    "kl_policy_target_exact": "exact KL(π ‖ target)",
    "kl_policy_target_sampled": "sampled KL(π ‖ target)",
    "kl_policy_target_valid_exact": "exact KL(π on valid ‖ target)",
    "valid_exact": "valid (exact)",
    "valid": "valid (sampled)",
    "accuracy": "accuracy",
    "rationale_accuracy": "rationale accuracy",
    "distinct_correct": "distinct correct rationales",
    "logp_ref": "log-lik.",
    "logp_ref_max": "max log-lik.",
    "diversity": "diversity",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "bleu4": "BLEU-4",
    "gleu": "GLEU",
    "bertscore_f1": "BERTScore F1",
    "mean_words": "words per sample",
    "rationale_words": "words per rationale",
    "empty": "empty rationales",
    "val_greedy_accuracy": "val greedy accuracy",
}
ARROWS = {"higher": "↑", "lower": "↓"}
FLOOR_SUFFIX = "_floor"     # `<metric>_floor`: the value a perfect sampler would still show (tv_sampled_floor)


def metric_label(metric: str) -> str:
    """The human name of a metric; pass@k keeps its name (it is the field's own), unknown ones stay as given."""
    if re.fullmatch(r"pass@\d+", metric):
        return metric
    return METRIC_LABELS.get(metric, metric)


def arrow(direction: str | None) -> str:
    """"↑" when higher is better, "↓" when lower is, "" when the task says neither (logp_ref on rng)."""
    return ARROWS.get(direction or "", "")


def labelled(metric: str, direction: str | None) -> str:
    """"exact TV ↓": the name with its arrow, as a column heading."""
    mark = arrow(direction)
    return f"{metric_label(metric)} {mark}" if mark else metric_label(metric)


def row_order(methods: Iterable[str], method_order: Sequence[str] | None = None) -> list[str]:
    """The methods present, known ones in METHOD_ORDER, then the others in `method_order`'s order (a bench's
    --methods list), then in order of first appearance: the same rows in the same places in every table."""
    present = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in present]
    rest = [m for m in present if m not in known]
    named = [m for m in (method_order or []) if m in rest]
    return known + named + [m for m in rest if m not in named]


def is_floor(metric: str, metrics: Iterable[str]) -> bool:
    """Whether `metric` is the perfect-sampler floor of another metric present (shown in that one's heading)."""
    return metric.endswith(FLOOR_SUFFIX) and metric[: -len(FLOOR_SUFFIX)] in set(metrics)
