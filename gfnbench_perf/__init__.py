"""`make perf` / `gfnbench perf`: the GFlowNet step against a naive pipeline, measured side by side in one run.

Every number that is compared is a ratio from the same run (the machine's speed drifts from day to day and other
processes share the cores), with the pipelines interleaved step by step and the median of the timed steps taken
after warm-up. Written to results/perf.md and results/perf.json.

Workloads (both pipelines sample exactly `--length` actions: the stop is blocked before and forced there):
- continuation: one ~60-token prompt, `--samples` samples x `--length` tokens, reward p(Z "." | X) of every prefix;
- arith: a training question, the 3-shot reward context and the calculator on (gfnbench only: HF `generate`
  cannot call a tool), reward p(prefix + ". The answer is N." | 3-shot context) of every prefix.
Pipelines:
- gfnbench: one `GFlowNetModule.training_step` (sample, reward of every prefix, teacher-forced policy pass,
  modified SubTB) + backward + AdamW, on-policy;
- naive: no-grad HF `generate`, one reward forward (adapters off) over context + sample (+ suffix), one policy
  forward over prompt + sample with full logits, trajectory-balance loss + backward + AdamW. It computes the
  reward of the final state only, i.e. less than SubTB needs; it is the pipeline one would write first.
- per-prefix naive (extra row, `benchmarks/gfn_step.py`'s reference): the reward of every prefix as its own
  sequence; nobody would write it, so it is not the headline.

Precisions (`--precisions fp32,bf16`, the default): every pipeline runs in fp32 and on a bf16-true base (bf16
frozen weights; LoRA, log Z, log-softmaxes and losses fp32), all four interleaved in the same rounds, each against
its own precision's same-run 2048^3 matmul peak; the `precision` object of perf.json holds the bf16 ratios and the
host's bf16 flags (the report says in one line whether the host has AMX).

    python -m gfnbench_perf [--model embedded] [--steps 6] [--precisions fp32,bf16] [--quick]

The package lives beside gfnbench, not in it: a benchmark of gfnbench, which gfnbench itself never imports (the
`gfnbench perf` command loads it only when run). Modules: machine (facts and peaks), floors (least work), workload
(the two pipelines), phases (the step split up), timing (interleaved rounds), precisions (bf16 against fp32),
children (own-process measurements), report (perf.md), run (main).
"""
from gfnbench_perf.floors import step_floor
from gfnbench_perf.run import main

__all__ = ["main", "step_floor"]
