"""GFlowNet diagnosis: train one GFlowNet row and print the task's probes (rng: exact TV / KL; arith: greedy val
accuracy) against steps, with log Z.

    python benchmarks/rng_diagnosis.py --steps 160 --settings '{"min_log_reward": -10}' [--task rng_peaked]
    python benchmarks/rng_diagnosis.py --task arith --steps 120 --settings '{"lr": 1e-3, "decay_to": 0.1}'

On rng the GFlowNet optimum is the target itself, so this curve tests the implementation, not a reward model.
"""
from __future__ import annotations

import argparse
import json
import time

from gfnbench.gflownet import GFlowNetSubTB, GFlowNetTB
from gfnbench.methods import RunContext
from gfnbench.models import load_model
from gfnbench.plots import CURVE_AXES
from gfnbench.profiles import get_profile
from gfnbench.runner import seed_everything
from gfnbench.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="rng")
    ap.add_argument("--loss", default="subtb", choices=["subtb", "tb"])
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--settings", default="{}", help='GFlowNet settings as JSON, e.g. \'{"min_log_reward": -10}\'')
    args = ap.parse_args()
    task = get_task(args.task)
    task.curve_points = max(1, args.steps // 20)
    prof = get_profile(args.profile)
    seed_everything(args.seed)
    lm = load_model(args.model)
    steps_mult = task.training.steps_multiplier
    prof = type(prof)(**{**prof.as_dict(), "train_steps": round(args.steps / steps_mult)})
    ctx = RunContext(seed=args.seed, profile=prof, log_dir=None, settings=json.loads(args.settings))
    method = (GFlowNetTB if args.loss == "tb" else GFlowNetSubTB)(task, lm, ctx)
    t0 = time.time()
    out = method.fit()
    print(f"trained {method.steps} steps in {time.time() - t0:.0f}s; config {json.dumps(method.config())}")
    rows = out["train_curve"]
    previous = 0
    for p in out["learning_curve"]:
        window = [r for r in rows if previous <= r["step"] < max(p["batches"], 1)]
        previous = p["batches"]
        share = sum(r.get("invalid_pair_share") or 0 for r in window) / max(len(window), 1)
        logz = window[-1].get("log_z") if window else None
        probes = "  ".join(f"{k} {v:.3f}" for k, v in p.items() if k not in CURVE_AXES)
        print(f"step {p['batches']:4d} evals {p['reward_evals']:5d} wall {p['wall_s']:6.0f}s  {probes}  "
              f"logZ {logz if logz is None else round(logz, 2)}  invalid-pair loss share {share:.2f}", flush=True)


if __name__ == "__main__":
    main()
