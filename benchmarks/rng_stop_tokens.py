"""Which token does the base LM write after a number? (issue 26: rng's stop action)

For each integer 0..100, the rng prompt followed by that number's digits, this prints the base model's
next-token probability of each candidate terminator, and that candidate's share when the policy may only
choose between the digit tokens and it (the mass the rng task's stop action would get there). The task's
`stop` setting should be the terminator the model itself uses, so that the base row is the model's preference
rather than an artefact of a stop it never writes.

    python benchmarks/rng_stop_tokens.py [--model embedded] [--out results/rng_stop_tokens.json]
"""
from __future__ import annotations

import argparse
import json

import torch

from gfnbench.models import load_model
from gfnbench.tasks import get_task
from gfnbench.tasks.base import token_mask

CANDIDATES = {"newline": "\n", "period": ".", "space": " ", "comma": ","}


def candidate_ids(tokenizer) -> dict[str, int]:
    """Single-token ids of the candidate terminators, plus eos (`<|im_end|>` for SmolLM2-Instruct)."""
    ids = {"eos": int(tokenizer.eos_token_id)}
    for name, text in CANDIDATES.items():
        tok = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tok) == 1:
            ids[name] = tok[0]
    return ids


@torch.no_grad()
def next_token_probs(lm, prompt: str, numbers: range) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, V] next-token probabilities after prompt + each number, and the digit-token mask."""
    tok = lm.tokenizer
    digits = token_mask(tok, lambda t: bool(t) and t.isdigit() and t.isascii())
    rows = []
    for n in numbers:
        ids = torch.tensor([tok(prompt + str(n), add_special_tokens=False)["input_ids"]])
        rows.append(torch.softmax(lm.model(input_ids=ids).logits[0, -1].float(), -1))
    return torch.stack(rows), digits


def summary(probs: torch.Tensor, digits: torch.Tensor, ids: dict[str, int], tokenizer) -> dict:
    digit_mass = probs[:, digits].sum(-1)
    out = {"digit_mass_mean": float(digit_mass.mean()), "candidates": {}}
    for name, i in ids.items():
        p = probs[:, i]
        share = p / (p + digit_mass)
        out["candidates"][name] = {"token": tokenizer.convert_ids_to_tokens(i), "p_mean": float(p.mean()),
                                   "p_median": float(p.median()), "share_vs_digits_mean": float(share.mean()),
                                   "share_vs_digits_min": float(share.min())}
    top = torch.topk(probs.mean(0), 10)
    out["top10_mean_next_tokens"] = [[tokenizer.convert_ids_to_tokens(int(i)), float(p)]
                                     for p, i in zip(top.values, top.indices)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    lm = load_model(args.model)
    task = get_task("rng")
    probs, digits = next_token_probs(lm, task.text, range(task.low, task.high + 1))
    result = {"model": lm.model_id, "prompt": task.text, "numbers": f"{task.low}..{task.high}",
              **summary(probs, digits, candidate_ids(lm.tokenizer), lm.tokenizer)}
    for name, c in result["candidates"].items():
        print(f"{name:8s} {c['token']!r:14s} p mean {c['p_mean']:.4f} median {c['p_median']:.4f}  "
              f"share vs digits mean {c['share_vs_digits_mean']:.4f} min {c['share_vs_digits_min']:.4f}")
    print(f"digit tokens' mass after a number (mean): {result['digit_mass_mean']:.4f}")
    print("top next tokens (mean over numbers):", ", ".join(f"{t!r} {p:.3f}" for t, p in
                                                            result["top10_mean_next_tokens"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
