"""GFlowNet step time vs a per-prefix naive pipeline, measured side by side in one run (ratios, not times).

This per-prefix naive (every prefix's reward as its own sequence) is an extra, labelled comparison: nobody would
write it. The headline comparison is `python -m gfnbench_perf` (`make perf`): gfnbench's step against the
naive pipeline one would write first (generate, one reward forward, one policy forward), FLOPs, the FLOP limit
and the step breakdown, written to results/perf.md.

Same batch, same model (embedded SmolLM2 + LoRA by default), same arithmetic reward:
- gfnbench: lock-step KV-cached sampling (no grad), every-prefix reward in ONE teacher-forced pass (suffix
  copies under a 4D mask), one teacher-forced policy pass + SubTB backward + AdamW step.
- naive: HF `generate`, then the reward of every prefix as its own sequence (context + prefix + answer),
  then the same teacher-forced training pass.
The calculator tool is off in both (HF `generate` cannot call it), and both sample exactly `--length` action
tokens (the stop is blocked until then and forced there), so both process batches of the same shape.

    .venv/bin/python benchmarks/gfn_step.py [--model embedded] [--samples 8] [--length 24] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from gfnbench.losses import subtb_loss
from gfnbench.models import adapters_off, add_lora, load_model
from gfnbench.sampling import SamplingConfig, policy_log_probs, sample
from gfnbench.tasks import get_task
from gfnbench.trajectories import from_rows


def naive_prefix_rewards(model, tokenizer, context: str, suffix: str, states: list[list[int]],
                         min_len: int) -> torch.Tensor:
    """log p(prefix_j + suffix | context) for every j, one padded sequence per (row, j)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    suf = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    L = max(len(s) for s in states)
    out = torch.zeros(len(states), L + 1)
    seqs, where = [], []
    for b, s in enumerate(states):
        for j in range(len(s) + 1):
            seqs.append(ctx + s[:j] + suf)
            where.append((b, j))
    width = max(map(len, seqs))
    for start in range(0, len(seqs), 16):
        chunk = seqs[start:start + 16]
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(chunk):
            ids[r, : len(s)], mask[r, : len(s)] = torch.tensor(s), 1
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for r, s in enumerate(chunk):
            b, j = where[start + r]
            out[b, j] = sum(float(logp[r, i - 1, s[i]]) for i in range(len(ctx), len(s)))
    out[:, :min_len] = float("-inf")
    return out


def train_step(policy, optimizer, traj, allowed, stop_id, log_reward) -> None:
    policy.train()
    log_pf, log_pterm = policy_log_probs(policy, traj, allowed, stop_id)
    loss = subtb_loss(log_pf, log_pterm, log_reward, traj.lengths)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def gfnbench_step(policy, tok, task, ex, cfg, n, allowed, stop_id, optimizer, gen) -> None:
    policy.eval()
    traj = sample(policy, tok, [task.prompt(ex)], n, cfg, stop_id=stop_id, allowed=allowed, generator=gen)
    with torch.no_grad(), adapters_off(policy) as base:
        log_r = task.log_reward(base, tok, traj, [ex])
    train_step(policy, optimizer, traj, allowed, stop_id, log_r)


def naive_step(policy, tok, task, ex, cfg, n, allowed, stop_id, optimizer) -> None:
    policy.eval()
    prompt_ids = tok(task.prompt(ex), return_tensors="pt", add_special_tokens=False)["input_ids"]
    bad = (~allowed).nonzero().flatten().tolist()
    with torch.no_grad():
        out = policy.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=True,
                              num_return_sequences=n, max_new_tokens=cfg.max_len, min_new_tokens=cfg.min_len,
                              eos_token_id=stop_id, pad_token_id=tok.pad_token_id,
                              suppress_tokens=bad, top_k=0)
    states = []
    for row in out[:, prompt_ids.shape[1]:].tolist():
        states.append(row[: row.index(stop_id)] if stop_id in row else row)
    traj = from_rows([task.prompt(ex)] * n, [0] * n, [prompt_ids[0].tolist()] * n, states,
                     [[True] * len(s) for s in states], [len(s) < cfg.max_len for s in states],
                     [[0.0] * len(s) for s in states], [[0.0] * (len(s) + 1) for s in states],
                     [tok.decode(s) for s in states], tok.pad_token_id)
    with adapters_off(policy) as base:
        log_r = naive_prefix_rewards(base, tok, task.reward_context(ex), task.answer_suffix(ex), states,
                                     task.min_len)
    train_step(policy, optimizer, traj, allowed, stop_id, log_r[:, : traj.max_actions + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--length", type=int, default=24, help="action tokens per sample, both pipelines")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lm = load_model(args.model)
    task = get_task("arith")
    ex = task.examples("train")[20]
    tok = lm.tokenizer
    policy = add_lora(lm.model, rank=16, alpha=16)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    allowed, stop_id = task.allowed_tokens(tok), task.stop_id(tok)
    cfg = SamplingConfig(temperature=1.0, min_len=args.length, max_len=args.length)
    gen = torch.Generator().manual_seed(0)
    times = {"gfnbench": [], "naive": []}
    for rep in range(args.repeats + 1):            # the first round warms up and is not counted
        for name in ("gfnbench", "naive"):
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            if name == "gfnbench":
                gfnbench_step(policy, tok, task, ex, cfg, args.samples, allowed, stop_id, optimizer, gen)
            else:
                naive_step(policy, tok, task, ex, cfg, args.samples, allowed, stop_id, optimizer)
            if rep:
                times[name].append(time.perf_counter() - t0)
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"model: {lm.model_id}; batch: 1 prompt x {args.samples} samples x {args.length} actions, "
          f"arithmetic reward (3-shot context); {args.repeats} timed steps each, interleaved")
    for k, v in times.items():
        print(f"  {k:9s} mean {mean[k]:.2f} s/step  ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"  speed-up gfnbench vs naive: {mean['naive'] / mean['gfnbench']:.2f}x")


if __name__ == "__main__":
    main()
