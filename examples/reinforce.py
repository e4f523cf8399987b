"""Example method for "Adding a method" in docs/contributing.md: REINFORCE with a leave-one-out baseline (RLOO).

Run it on any task: `gfnbench run --task rng --method examples/reinforce.py --profile smoke`. It shows the whole
method contract: a settings dataclass (`--reinforce.lr 1e-3` works and is checked), a LightningModule on
`TrainedModule` (the trained rows' base: the task's mask and stop, a seeded sampling stream, resumable
checkpoints), and a row on `PromptStepMethod`, which gives it the trained rows' budget rules without knowing
them: the profile's steps scaled by the task's `steps_multiplier`, `prompts_per_step` prompts a step drawn by
the task's `prompt_weights`, and the budget the leaderboard prints in the table header.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from gfnbench.methods import register_method
from gfnbench.objectives import terminal_log_reward
from gfnbench.policy import PromptStepMethod, lora_policy, sample_scored, trainable_parameters
from gfnbench.sampling import policy_log_probs
from gfnbench.trained import TrainedModule


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


class ReinforceModule(TrainedModule):
    def __init__(self, task, lm, cfg: ReinforceConfig, train_examples, seed: int):
        super().__init__(task, lm, cfg, train_examples, seed)
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, None, seed)

    def training_step(self, batch, batch_idx):
        ex = self.examples[int(batch[0])]
        traj = sample_scored(self.task, self.policy, self.tokenizer, [ex], self.cfg.samples_per_prompt,
                             context=self.context, generator=self.generator, what=f"REINFORCE step {self.global_step}")
        final = terminal_log_reward(traj.log_reward, traj.lengths, self.cfg.min_log_reward)
        self.policy.train()
        log_pf, log_pterm = policy_log_probs(self.policy, traj, self.allowed, self.stop_id)
        log_q = log_pf.sum(1) + log_pterm.gather(1, traj.lengths[:, None]).squeeze(1)
        loss = -(leave_one_out_advantages(final) * log_q).mean()
        self.log("train/reward", final.mean(), prog_bar=True)
        self.curve.append({"step": int(self.global_step), "loss": float(loss.detach()),
                           "log_reward": float(final.mean())})
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(trainable_parameters(self.policy), lr=self.cfg.lr)


@register_method("reinforce", "REINFORCE with a leave-one-out baseline (the example method of docs/contributing.md)")
class Reinforce(PromptStepMethod):
    settings_class = ReinforceConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        self.cfg = self.build_settings({"lr": ctx.profile.learning_rate})
        self.module = ReinforceModule(task, lm, self.cfg, task.examples("train"), ctx.seed)

    def config(self) -> dict:
        return {"reinforce": asdict(self.cfg), "train_steps": self.steps}
