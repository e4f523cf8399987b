"""Which trained rows flatten `rng`, and which keep the base model's ratios among valid answers?

GX-Chen et al. (2025): when every valid answer gets the same reward, the KL-regularised reward-maximisation
optimum keeps the base model's ratios among them, whatever β is; a distribution matcher moves to the target.
For each method: train it on rng (the cpu profile's budget, one seed), enumerate the policy's exact distribution,
renormalise it on the valid answers, and print its TV to the uniform target and to the base model's own
renormalised distribution, with the valid mass.

    python benchmarks/rng_ratios.py --methods gflownet,ppo,grpo,tb_vargrad,flowrl [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import time

from gfnbench.catalog import get_method
from gfnbench.methods import RunContext
from gfnbench.models import adapters_off, load_model
from gfnbench.profiles import get_profile
from gfnbench.runner import seed_everything
from gfnbench.tasks import get_task


def valid_shape(task, dist: dict[str, float]) -> tuple[dict[int, float], float]:
    """The distribution renormalised on valid answers, and the valid mass."""
    valid = {}
    for text, p in dist.items():
        value = task.parse(text)
        if value is not None:
            valid[value] = valid.get(value, 0.0) + p
    mass = sum(valid.values())
    return {v: p / mass for v, p in valid.items()} if mass > 0 else {}, mass


def tv(p: dict, q: dict) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="gflownet,ppo,grpo,tb_vargrad,flowrl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="embedded")
    args = ap.parse_args()
    task, prof = get_task("rng"), get_profile("cpu")
    uniform = {v: 1.0 / len(task.outcomes()) for v in task.outcomes()}
    for name in args.methods.split(","):
        seed_everything(args.seed)
        lm = load_model(args.model)
        method = get_method(name).factory(task, lm, RunContext(seed=args.seed, profile=prof, method=name))
        started = time.time()
        method.fit()
        policy = method.policy.eval()
        shape, mass = valid_shape(task, task.exact_distribution(policy, lm.tokenizer, task.text))
        with adapters_off(policy) as base:
            base_shape, base_mass = valid_shape(task, task.exact_distribution(base, lm.tokenizer, task.text))
        print(json.dumps({"method": name, "seed": args.seed, "budget": method.budget().summary,
                          "train_s": round(time.time() - started), "valid_mass": round(mass, 4),
                          "tv_valid_shape_to_uniform": round(tv(shape, uniform), 4),
                          "tv_valid_shape_to_base_shape": round(tv(shape, base_shape), 4),
                          "base_tv_valid_shape_to_uniform": round(tv(base_shape, uniform), 4),
                          "base_valid_mass": round(base_mass, 4)}), flush=True)


if __name__ == "__main__":
    main()
