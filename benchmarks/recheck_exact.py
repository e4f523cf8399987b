"""Re-check a trained run's exact metrics (rng) from its stored adapters, without re-training (issue 26).

The method is rebuilt from its record (task, method, seed, settings, profile, precision, model), the saved
weights (adapters.pt) are put into its evaluation networks, and the declared exact sampler is enumerated
again. Every exact metric and every stored outcome probability must match the record.

    python benchmarks/recheck_exact.py results/runs/rng/gflownet/seed0 [--tol 1e-6]

Exit status 0 when everything matches, 1 when something does not (the lines say what).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gfnbench.catalog import get_method
from gfnbench.evaluation import exact_metrics, exact_outcomes
from gfnbench.methods import RunContext
from gfnbench.models import load_model
from gfnbench.precision import cast_frozen_base
from gfnbench.profiles import Profile
from gfnbench.records import RECORD
from gfnbench.tasks import get_task


def rebuild(run: Path, record: dict):
    """The run's method with its stored weights in, on the record's model and precision."""
    profile = Profile(**record["config"]["profile"])
    task, lm = get_task(record["task"]), load_model(profile.model)
    cast_frozen_base(lm.model, profile.precision)
    ctx = RunContext(seed=record["seed"], profile=profile, settings=record.get("settings") or {},
                     method=record["method"])
    impl = get_method(record["method"]).factory(task, lm, ctx)
    states = torch.load(run / "adapters.pt")
    for module, state in zip(impl.evaluation_modules(), states, strict=True):
        missing = set(state) - {name for name, _ in module.named_parameters()}
        if missing:
            raise SystemExit(f"{run}/adapters.pt names weights the rebuilt method lacks: {sorted(missing)[:3]}")
        module.load_state_dict(state, strict=False)
    return impl, task, profile


def differences(record: dict, metrics: dict, outcomes: dict, tol: float) -> list[str]:
    """What differs by more than `tol` between the record and the re-computation."""
    out = []
    for split, values in metrics.items():
        for key, value in values.items():
            stored = record["metrics"][split][key]
            if abs(stored - value) > tol:
                out.append(f"{split} {key}: record {stored!r}, recomputed {value!r}")
    for split, per_question in record.get("exact_outcomes", {}).items():
        for qid, dist in per_question.items():
            worst = max(abs(p - outcomes[split][qid][x]) for x, p in dist.items())
            if worst > tol:
                out.append(f"{split} {qid}: an outcome's probability differs by {worst:.3g}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder holding record.json and adapters.pt")
    ap.add_argument("--tol", type=float, default=1e-6)
    args = ap.parse_args(argv)
    run = Path(args.run)
    record = json.loads((run / RECORD).read_text())
    if not (run / "adapters.pt").is_file():
        raise SystemExit(f"{run} has no adapters.pt: only runs saved with --save_adapters true (the default since "
                         f"issue 26) can be re-checked")
    impl, task, profile = rebuild(run, record)
    with torch.no_grad():
        metrics = {split: exact_metrics(impl, task, task.examples(split)[:1]) for split in task.eval_splits}
        outcomes = exact_outcomes(impl, task, profile)
    if not any(metrics.values()):
        raise SystemExit(f"{record['method']} declares no exact sampler on {record['task']}: nothing to re-check")
    problems = differences(record, metrics, outcomes, args.tol)
    for split, values in metrics.items():
        print(" ".join(f"{split} {k} {v:.6f} (record {record['metrics'][split][k]:.6f})" for k, v in values.items()))
    print("\n".join(problems) if problems else f"all exact metrics and outcome probabilities match to {args.tol}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
