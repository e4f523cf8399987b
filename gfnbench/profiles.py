"""Run profiles: how big a benchmark run is. `smoke` for tests and CI, `cpu` for `make bench`, `paper` for GPUs."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    eval_questions: int | None      # per evaluation split; None = all
    eval_samples: int | None        # per question; None = the task's own (paper: 10)
    eval_batch: int                 # questions sampled together
    train_steps: int                # optimizer steps for training methods
    prompts_per_step: int           # prompts accumulated into one optimizer step
    samples_per_prompt: int         # trajectories per prompt (GFlowNet / PPO batch)
    lora_rank: int
    lora_alpha: int
    learning_rate: float
    results_dir: str
    skip_costly: bool = False       # `bench` leaves out each task's `costly_methods` unless --methods names them
    task_eval_floor: bool = False   # raise eval_questions to a task's `min_eval_questions` (smoke stays tiny)
    bench_jobs: int | None = 1      # runs side by side in `bench`; None: one per core (up to 4) on a CPU
    # where it computes (gfnbench/devices.py; `--accelerator` etc. override these for one run or bench)
    accelerator: str = "cpu"        # auto, cpu or gpu
    devices: int = 1                # processes, one per device (DDP/FSDP when > 1)
    strategy: str = "auto"          # auto (one device), ddp or fsdp
    # 32-true (alias 32), bf16-true (bf16 base weights, fp32 LoRA/heads/log-probs), bf16-mixed (training under
    # autocast) or auto (bf16-true on AMX CPUs and bf16 GPUs); see precision.py. Every profile stays 32-true until
    # the committed tables are re-run in bf16.
    precision: str = "32-true"

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile("smoke", model="tiny", eval_questions=3, eval_samples=4, eval_batch=3, train_steps=3,
                     prompts_per_step=1, samples_per_prompt=4, lora_rank=4, lora_alpha=8, learning_rate=1e-3,
                     results_dir="results/smoke"),
    "cpu": Profile("cpu", model="embedded", eval_questions=100, eval_samples=None, eval_batch=10, train_steps=40,
                   prompts_per_step=1, samples_per_prompt=8, lora_rank=16, lora_alpha=16, learning_rate=1e-4,
                   results_dir="results", skip_costly=True, task_eval_floor=True, bench_jobs=None),
    "paper": Profile("paper", model="EleutherAI/gpt-j-6b", eval_questions=None, eval_samples=None, eval_batch=16,
                     train_steps=2000, prompts_per_step=32, samples_per_prompt=16, lora_rank=64, lora_alpha=16,
                     learning_rate=1e-4, results_dir="results/paper", accelerator="auto"),   # a GPU when torch sees one
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    return PROFILES[name]
