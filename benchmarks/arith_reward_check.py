"""Does the arith reward prefer correct rationales? A check of the reward model alone, no training.

For each val question: log R of the gold rationale (calculator outputs included, as the sampler writes them)
against log R of n rationales sampled from the base model under the policy's prompt at T = 1 (what the
GFlowNet sees at its first steps). If wrong rationales out-score the gold one, the GFlowNet's target itself
(R^(1/T)) puts its mass on wrong answers, and no amount of training makes the sampler accurate.

    python benchmarks/arith_reward_check.py [--questions 24] [--samples 16] [--model embedded]
    python benchmarks/arith_reward_check.py --run results/runs/arith/gflownet/seed0 --split test_3op

With --run, the candidates are a trained row's recorded evaluation samples (its samples.jsonl.gz) instead of fresh
base-model draws: whether the trained sampler sits where the reward is high (a sampler that matched R^(1/T)
would put its samples near the gold rationale's log R, not far below it).
"""
from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import replace

import torch

from gfnbench.models import adapters_off, load_model
from gfnbench.policy import gold_trajectory, sample_task, trajectories_from_states
from gfnbench.records import read_samples
from gfnbench.sampling import encode
from gfnbench.tasks import get_task
from gfnbench.tasks.arith import extract_answer

# the gold is scored in a batch of its own and the samples in theirs, so a sample that writes the gold rationale
# reads a log R differing from it by float rounding (~1e-6): "above the gold" means above it by more than this
TIE = 1e-4


def final_log_reward(task, model, tokenizer, traj, ex) -> list[float]:
    with torch.no_grad(), adapters_off(model) as base:
        log_r = task.log_reward(base, tokenizer, traj, [ex] * len(traj))
    return log_r.gather(1, traj.lengths[:, None]).squeeze(1).tolist()


def text_trajectories(task, tok, prompt: str, texts: list[str]):
    """Rebuild recorded texts as the sampler wrote them (calculator outputs as non-action state tokens)."""
    return trajectories_from_states(prompt, encode(tok, [prompt])[0],
                                    [(*gold_trajectory(task, tok, t), True) for t in texts], tok)


def recorded_texts(run: str, split: str) -> dict[str, list[str]]:
    """A run's evaluation samples of one split, by question id (questions it did not evaluate are absent)."""
    texts: dict[str, list[str]] = {}
    for r in read_samples(run):      # samples.jsonl.gz, or an older run's plain samples.jsonl
        if r["split"] == split:
            texts.setdefault(r["id"], []).append(r["text"])
    return texts


def check_question(task, lm, ex, n: int, generator, recorded: list[str] | None = None) -> dict:
    tok, prompt = lm.tokenizer, task.prompt(ex)
    gold_r = final_log_reward(task, lm.model, tok, text_trajectories(task, tok, prompt, [" " + ex.rationale]), ex)[0]
    if recorded is not None:
        drawn = text_trajectories(task, tok, prompt, recorded)
    else:
        with torch.no_grad():
            drawn = sample_task(task, lm.model, tok, [prompt], n, task.sampling(train=True),
                                context=lm.context_length, generator=generator)
    drawn = replace(drawn, group=torch.zeros(len(drawn), dtype=torch.long))    # every row answers `ex`
    rewards = final_log_reward(task, lm.model, tok, drawn, ex)
    correct = [extract_answer(t) == ex.answer for t in drawn.texts]
    finite = [(r, c, t) for r, c, t in zip(rewards, correct, drawn.texts) if math.isfinite(r)]
    best = max(finite, default=(float("-inf"), False, ""))
    beaten = sum(r > gold_r + TIE for r, _, _ in finite)
    # share of R over {gold} + samples that sits on rationales reaching the right answer
    pool = [(gold_r, True)] + [(r, c) for r, c, _ in finite]
    top = max(r for r, _ in pool)
    mass = [math.exp(r - top) for r, _ in pool]
    right = sum(m for m, (_, c) in zip(mass, pool) if c) / sum(mass)
    return {"gold": gold_r, "best": best[0], "best_correct": best[1], "best_text": best[2], "beaten": beaten,
            "n": len(finite), "right_mass": right}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default=None, help="a run folder: score its recorded samples instead of base draws")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    task, lm = get_task("arith"), load_model(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    recorded = recorded_texts(args.run, args.split) if args.run else None
    examples = [ex for ex in task.examples(args.split) if recorded is None or ex.id in recorded]
    rows = []
    for ex in examples[: args.questions]:
        row = check_question(task, lm, ex, args.samples, generator, recorded[ex.id] if recorded else None)
        rows.append(row)
        print(f"{ex.question:>16} = {ex.answer:>3}  log R gold {row['gold']:7.2f}  best sample {row['best']:7.2f} "
              f"({'right' if row['best_correct'] else 'wrong'}: {row['best_text'].strip()[:40]!r})  "
              f"samples above gold {row['beaten']}/{row['n']}", flush=True)
    source = (f"{args.run}'s recorded samples" if args.run
              else f"{args.samples} base-model samples (T = 1, policy prompt)")
    print(f"\nquestions {len(rows)} of {args.split}; candidates: {source}")
    print(f"gold rationale beaten by at least one sample: {sum(r['beaten'] > 0 for r in rows)}/{len(rows)}")
    print(f"best-rewarded candidate reaches the right answer: "
          f"{sum((r['gold'] >= r['best']) or r['best_correct'] for r in rows)}/{len(rows)}")
    print(f"median share of reward (gold + samples) on right answers: "
          f"{statistics.median(r['right_mass'] for r in rows):.3f}")
    print(f"mean log R: gold {statistics.mean(r['gold'] for r in rows):.2f}, "
          f"best sample {statistics.mean(r['best'] for r in rows if math.isfinite(r['best'])):.2f}")


if __name__ == "__main__":
    main()
