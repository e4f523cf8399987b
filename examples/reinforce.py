"""Example method for the README's "Adding a method": REINFORCE with a leave-one-out baseline (RLOO).

Run it on any task: `gfnbench run --task rng --method examples/reinforce.py --profile smoke`. It shows the whole
method contract: a settings dataclass (`--reinforce.lr 1e-3` works and is checked), `fit` with a Lightning
Trainer, `sample`, and `budget`, which the leaderboard prints in the table header.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import lightning as L
import torch

from gfnbench.losses import check_log_reward
from gfnbench.methods import Budget, Method, make_trainer, register_method
from gfnbench.models import adapters_off
from gfnbench.objectives import terminal_log_reward
from gfnbench.policy import lora_policy, sample_policy, sample_task, seeded_prompt_loader, trainable_parameters
from gfnbench.sampling import policy_log_probs


@dataclass(frozen=True)
class ReinforceConfig:
    lr: float = 1e-4
    samples_per_prompt: int = 4
    min_log_reward: float = -99.0     # floor for zero rewards (-inf)
    lora_rank: int = 8
    lora_alpha: int = 16

    def __post_init__(self):
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2 (the baseline leaves one sample out)")


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """r_i - mean of the other samples' rewards (unbiased baseline)."""
    n = rewards.shape[0]
    return rewards - (rewards.sum() - rewards) / (n - 1)


class ReinforceModule(L.LightningModule):
    def __init__(self, task, lm, cfg: ReinforceConfig, seed: int):
        super().__init__()
        self.task, self.lm, self.cfg = task, lm, cfg
        self.examples = task.examples("train")
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, None, seed)
        self.generator = torch.Generator().manual_seed(seed)

    def training_step(self, batch, batch_idx):
        ex, tok = self.examples[int(batch[0])], self.lm.tokenizer
        self.policy.eval()
        with torch.no_grad():
            traj = sample_task(self.task, self.policy, tok, [self.task.prompt(ex)], self.cfg.samples_per_prompt,
                               self.task.sampling(train=True), context=self.lm.context_length,
                               generator=self.generator)
            with adapters_off(self.policy) as base:
                log_r = self.task.log_reward(base, tok, traj, [ex])
        check_log_reward(log_r, f"task {self.task.name}", traj.lengths)
        final = terminal_log_reward(log_r, traj.lengths, self.cfg.min_log_reward)
        self.policy.train()
        log_pf, log_pterm = policy_log_probs(self.policy, traj, self.task.allowed_tokens(tok), self.task.stop_id(tok))
        log_q = log_pf.sum(1) + log_pterm.gather(1, traj.lengths[:, None]).squeeze(1)
        loss = -(leave_one_out_advantages(final) * log_q).mean()
        self.log("train/reward", final.mean(), prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(trainable_parameters(self.policy), lr=self.cfg.lr)


@register_method("reinforce", "REINFORCE with a leave-one-out baseline (the README's example method)", trains=True)
class Reinforce(Method):
    trains = True
    settings_class = ReinforceConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        self.cfg = self.build_settings({"lr": ctx.profile.learning_rate})
        self.steps = max(1, ctx.profile.train_steps)
        self.module = ReinforceModule(task, lm, self.cfg, ctx.seed)

    @property
    def policy(self):
        return self.module.policy

    def fit(self) -> dict:
        loader = seeded_prompt_loader(len(self.module.examples), 1, self.steps, self.ctx.seed)
        make_trainer(self.ctx, max_steps=self.steps).fit(self.module, train_dataloaders=loader)
        return {}

    def sample(self, examples, n, generator):
        return sample_policy(self.task, self.policy, self.lm, examples, n, generator)

    def budget(self) -> Budget:
        return Budget(self.steps * self.cfg.samples_per_prompt, self.steps,
                      f"{self.steps} steps x {self.cfg.samples_per_prompt} samples")

    def config(self) -> dict:
        return {"reinforce": asdict(self.cfg), "train_steps": self.steps}
