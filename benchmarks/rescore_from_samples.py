"""Re-score committed runs from their samples when a task's text-only scoring rule changes (e.g. arith's strict
answer extraction, issue 26): every question's `task.score(texts, example)` is recomputed from samples.jsonl.gz and
the record's per-question lists and split means are replaced; everything a model scored (logp_ref, exact metrics,
`score_with_model`) is kept as it was. The record gains a `rescored` entry saying by what, from which commit, and
which metrics changed, so a reader can tell a rescored record from a fresh one.

    python benchmarks/rescore_from_samples.py --task arith [--results_dir results/runs] [--dry_run]

The learning curves' probes (e.g. arith's val_greedy_accuracy) cannot be rescored (their texts were not kept):
the `rescored` entry says so.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from gfnbench.metrics import mean
from gfnbench.records import atomic_write_text, git_commit, read_record, read_samples, utc_now
from gfnbench.tasks.lookup import get_task


def texts_by_question(samples: list[dict]) -> dict[tuple[str, str], list[str]]:
    """(split, question id) -> its sample texts in sample order."""
    grouped: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for row in samples:
        grouped[(row["split"], row["id"])].append((int(row["sample"]), row["text"]))
    return {key: [text for _, text in sorted(rows)] for key, rows in grouped.items()}


def rescore_record(record: dict, samples: list[dict], task) -> dict[str, dict[str, tuple[float, float]]]:
    """Replace the text-scored metrics of `record` in place; returns {split: {metric: (old mean, new mean)}}."""
    texts = texts_by_question(samples)
    changed: dict[str, dict[str, tuple[float, float]]] = {}
    for key in ("metric_directions", "metric_info"):      # what the task now declares for the metrics it scores
        record[key] = {**(record.get(key) or {}), **getattr(task, key)}
    for split, entry in record["per_question"].items():
        examples = {ex.id: ex for ex in task.examples(split)}
        scores = [task.score(texts[(split, qid)], examples[qid]) for qid in entry["ids"]]
        for key in scores[0]:
            old = record["metrics"][split].get(key)
            entry[key] = [q[key] for q in scores]          # a metric the task added gets its per-question list
            new = mean([q[key] for q in scores])
            record["metrics"][split][key] = new
            if old is None or abs(old - new) > 1e-12:
                changed.setdefault(split, {})[key] = (old, new)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--results_dir", default="results/runs")
    parser.add_argument("--reason", required=True, help="why, e.g. 'issue 26: strict answer extraction'")
    parser.add_argument("--dry_run", action="store_true")
    args = parser.parse_args(argv)
    task = get_task(args.task)
    commit = git_commit()
    paths = sorted(Path(args.results_dir, args.task).glob("*/seed*/record.json"))
    if not paths:
        raise SystemExit(f"no records under {args.results_dir}/{args.task}: check --results_dir and --task")
    for path in paths:
        record = read_record(path)
        changed = rescore_record(record, read_samples(path.parent), task)
        entry = {
            "by": "benchmarks/rescore_from_samples.py", "at": utc_now(), "git_commit": commit, "reason": args.reason,
            "changed": {s: {k: {"old": o, "new": n} for k, (o, n) in m.items()} for s, m in changed.items()},
            "not_rescored": "learning_curve and train_curve probes (their texts were not kept)",
        }
        earlier = record.get("rescored")
        if earlier:                                        # keep every earlier rescoring, oldest first
            entry["earlier"] = [*earlier.pop("earlier", []), earlier]
        record["rescored"] = entry
        summary = "; ".join(f"{s} " + ", ".join(f"{k} {'new' if o is None else f'{o:.3f}'}->{n:.3f}"
                                                  for k, (o, n) in m.items())
                            for s, m in changed.items())
        print(f"{path.parent}: {summary or 'unchanged'}")
        if not args.dry_run:
            atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
