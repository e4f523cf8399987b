"""Could any sampler of the arith reward beat SFT? The reward's posterior over every well-formed rationale, exactly.

The tables' GFlowNet rows miss the paper's claim on test_4op (docs/results.md#arith). Either the sampler does not
reach its target R^(1/T), or the target itself puts little mass on right answers with this reward model. This
script tells the two apart without training: for each question it enumerates a space of calculator rationales,
scores every one under the reward the rows train on (log R of the final state, calculator outputs in context,
the task's own `log_reward`), and reports what a perfect sampler of R^(1/T) restricted to that space would answer.

The space, for a question with n operands: k = 1 .. n-1 steps; step 1 combines two of the question's numbers
(ordered, either operator), every later step combines the previous result with one number not used yet (either
operator), each written as the sampler writes it (`6 - 0 = 6, 6 - 4 = 2`). It holds the gold rationale, every
rationale that stops early on an intermediate result, and wrong operator or operand choices; it leaves out text
that is not a calculator rationale (which reaches no answer at all).

    python benchmarks/arith_posterior_check.py [--split test_4op] [--questions 20] [--precision bf16-true]
    python benchmarks/arith_posterior_check.py --run <a run folder with adapters.pt, e.g. .../sft_gflownet/seed0>

With --run, the trained policy's own probability of every rationale in the space (its sampler at T = 1, the stop
included) is set beside the target: how much of its mass lies in the space, and, renormalised over the space, its
share on right answers and on each step count, and its total variation from R^(1/T).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arith_reward_check import final_log_reward, text_trajectories  # noqa: E402

from gfnbench.models import load_model  # noqa: E402
from gfnbench.policy import lora_policy, sequence_log_prob_of  # noqa: E402
from gfnbench.precision import cast_frozen_base  # noqa: E402
from gfnbench.records import atomic_write_text, git_commit, package_versions  # noqa: E402
from gfnbench.tasks import get_task  # noqa: E402
from gfnbench.tasks.arith import evaluate_left_to_right, extract_answer  # noqa: E402

TEMPERATURES = (1.0, 0.5)       # the reward temperature schedule's ends (1.1 -> 0.5; T = 1 is R itself)
BATCH = 32


def question_numbers(question: str) -> tuple[list[int], list[str]]:
    """`6 - 0 - 4 - 8` -> ([6, 0, 4, 8], ['-', '-', '-'])."""
    parts = question.split()
    return [int(p) for p in parts[0::2]], parts[1::2]


def step(a: int, op: str, b: int) -> tuple[str, int]:
    value = evaluate_left_to_right([a, b], [op])
    return f"{a} {op} {b} = {value}", value


def rationale_space(numbers: list[int]) -> list[str]:
    """Every rationale of the space above, as text with a leading space (the sampler's), without duplicates."""
    out: dict[str, None] = {}

    def extend(steps: list[str], value: int, unused: list[int]) -> None:
        out[" " + ", ".join(steps)] = None
        for pos, op in itertools.product(range(len(unused)), "+-"):
            text, new = step(value, op, unused[pos])
            extend(steps + [text], new, unused[:pos] + unused[pos + 1:])

    for i, j in itertools.permutations(range(len(numbers)), 2):
        for op in "+-":
            text, value = step(numbers[i], op, numbers[j])
            extend([text], value, [x for k, x in enumerate(numbers) if k not in (i, j)])
    return list(out)


def normalised(log_values: list[float], temperature: float = 1.0) -> list[float]:
    """exp(v / T) over the list, summing to 1 (shifted by the maximum, so no term overflows)."""
    top = max(log_values) / temperature
    mass = [math.exp(v / temperature - top) for v in log_values]
    total = sum(mass)
    return [m / total for m in mass]


def posterior_shares(log_r: list[float], right: list[bool], temperature: float) -> float:
    """The share of R^(1/T) over the space that sits on rationales ending on the right answer."""
    return sum(m for m, ok in zip(normalised(log_r, temperature), right) if ok)


def scores(task, tok, prompt: str, texts: list[str], score) -> list[float]:
    out: list[float] = []
    for start in range(0, len(texts), BATCH):
        out += score(text_trajectories(task, tok, prompt, texts[start:start + BATCH]))
    return out


def check_question(task, lm, ex) -> dict:
    tok, prompt = lm.tokenizer, task.prompt(ex)
    texts = rationale_space(question_numbers(ex.question)[0])
    log_r = scores(task, tok, prompt, texts, lambda traj: final_log_reward(task, lm.model, tok, traj, ex))
    right = [extract_answer(t) == ex.answer for t in texts]
    steps = [t.count("=") for t in texts]
    gold = texts.index(" " + ex.rationale)
    best = max(range(len(texts)), key=log_r.__getitem__)
    return {"question": ex.question, "answer": ex.answer, "texts": texts, "log_r": log_r, "right": right,
            "steps": steps, "candidates": len(texts),
            "right_candidates": sum(right), "gold_log_r": log_r[gold],
            "gold_rank": 1 + sum(r > log_r[gold] for r in log_r), "best_text": texts[best].strip(),
            "best_log_r": log_r[best], "best_right": right[best], "best_steps": steps[best],
            **{f"right_share_T{t:g}": posterior_shares(log_r, right, t) for t in TEMPERATURES},
            **{f"gold_share_T{t:g}": posterior_shares(log_r, [i == gold for i in range(len(texts))], t)
               for t in TEMPERATURES},
            **{f"steps{k}_share_T1": posterior_shares(log_r, [s == k for s in steps], 1.0)
               for k in sorted(set(steps))}}


def load_run_policy(lm, run: Path, policy=None):
    """A finished run's policy: a LoRA of the run's shape on `lm` (already cast as the run was; or `policy`, made
    for an earlier run of the same shape), its weights from the run's adapters.pt (whose first network is the
    policy)."""
    settings = json.loads((run / "config.json").read_text())["method"]
    shape = next(v for v in settings.values() if isinstance(v, dict) and "lora_rank" in v)
    if policy is None:
        policy = lora_policy(lm, shape["lora_rank"], shape["lora_alpha"], shape["lora_targets"], seed=0)
    saved = torch.load(run / "adapters.pt", map_location="cpu", weights_only=True)[0]
    own = {name: p for name, p in policy.named_parameters() if p.requires_grad}
    if set(saved) != set(own) or any(saved[n].shape != p.shape for n, p in own.items()):
        raise ValueError(f"{run}/adapters.pt is not a LoRA of this policy's shape (rank {shape['lora_rank']}); "
                         f"check runs of one LoRA shape per call")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(saved[name])
    return policy.eval()


def policy_against_target(task, lm, policy, ex, row: dict) -> dict:
    """The policy's distribution over the row's space beside the target R^(1/T) over the same space."""
    tok, texts = lm.tokenizer, row["texts"]
    allowed, stop = task.allowed_tokens(tok), task.stop_id(tok)
    with torch.no_grad():
        log_q = scores(task, tok, task.prompt(ex), texts,
                       lambda traj: sequence_log_prob_of(policy, traj, task, allowed, stop).tolist())
    q, right, steps, top = normalised(log_q), row["right"], row["steps"], max(log_q)
    return {"policy_mass_in_space": math.exp(top) * sum(math.exp(v - top) for v in log_q),
            "policy_right_share": sum(v for v, ok in zip(q, right) if ok),
            **{f"policy_steps{k}_share": sum(v for v, s in zip(q, steps) if s == k) for k in sorted(set(steps))},
            **{f"policy_tv_to_target_T{t:g}": 0.5 * sum(abs(a - b) for a, b in zip(q, normalised(row["log_r"], t)))
               for t in TEMPERATURES}}


def summary(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if "share" in k or "policy_" in k]
    return {"questions": len(rows), "best_right": sum(r["best_right"] for r in rows) / len(rows),
            "gold_is_best": sum(r["gold_rank"] == 1 for r in rows) / len(rows),
            "median_gold_rank": statistics.median(r["gold_rank"] for r in rows),
            "median_candidates": statistics.median(r["candidates"] for r in rows),
            **{f"mean_{k}": statistics.mean(r[k] for r in rows if k in r) for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test_4op")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--precision", default="bf16-true", help="32-true or bf16-true (the committed arith table's)")
    ap.add_argument("--run", default="", help="run folders with adapters.pt, comma-separated: each policy "
                                              "beside the target")
    ap.add_argument("--out", default=None, help="write the rows and summary as JSON here")
    args = ap.parse_args()
    task, lm = get_task("arith"), load_model(args.model)
    cast_frozen_base(lm.model, args.precision)
    rows, t0 = [], time.time()
    for ex in task.examples(args.split)[: args.questions]:
        row = check_question(task, lm, ex)
        rows.append(row)
        print(f"{ex.question:>18} = {ex.answer:>3}  {row['candidates']:4d} rationales "
              f"({row['right_candidates']} right)  "
              f"gold log R {row['gold_log_r']:7.2f} rank {row['gold_rank']:3d}  best {row['best_log_r']:7.2f} "
              f"{'right' if row['best_right'] else 'wrong'} {row['best_text']!r}  right share T=1 "
              f"{row['right_share_T1']:.3f}, T=0.5 {row['right_share_T0.5']:.3f}", flush=True)
    policy = None           # after every reward: the LoRA goes into lm.model, so the rewards are scored first
    for run in filter(None, args.run.split(",")):
        policy, label = load_run_policy(lm, Path(run), policy), "/".join(Path(run).parts[-2:])
        for ex, row in zip(task.examples(args.split), rows):
            out = policy_against_target(task, lm, policy, ex, row)
            row.update({f"{label} {k}": v for k, v in out.items()})
            print(f"{ex.question:>18}  {label}: mass in space {out['policy_mass_in_space']:.3f}, right share "
                  f"{out['policy_right_share']:.3f}, TV to target T=1 {out['policy_tv_to_target_T1']:.3f}", flush=True)
    for row in rows:
        del row["texts"], row["log_r"], row["right"], row["steps"]
    result = {"split": args.split, "model": lm.model_id, "precision": args.precision, "runs": args.run,
              "git_commit": git_commit(), "packages": package_versions(),
              "wall_time_s": round(time.time() - t0, 1), "summary": summary(rows), "rows": rows}
    print(json.dumps(result["summary"], indent=1))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
