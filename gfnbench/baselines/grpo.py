"""GRPO: group-relative policy optimisation (Shao et al. 2024, DeepSeekMath), and Dr. GRPO (Liu et al. 2025) as
a setting. A reward maximiser: no value head, the baseline is the prompt's group of samples.

One iteration: sample `samples_per_prompt` trajectories for each of `prompts_per_step` training prompts (the shared
sampler with the task's mask, stop, tool and lengths), score them with the task's untempered terminal log reward
(base model, adapters off; -inf floored at `min_log_reward`), standardise the rewards within each prompt's group
(the advantage of every action of a sample), then take `epochs` clipped-surrogate steps on the batch, with an
optional k3 KL penalty to the base model (adapters off) added per action.

Actions and their probabilities are the sampler's (objectives.sampler_action_log_probs): the n tokens, then the
stop when the policy chose it; the stop is renormalised away before min_len. Dr. GRPO: `scale_by_std: false`
and `normalise_by_length: false` (each sample's summed loss divided by the longest possible sample instead).
Settings: DeepSeekMath's clip 0.2, KL coefficient 0.04 and one update per batch (mu = 1, as TRL's default; the
ratio is then 1 and the clip only acts from the second epoch). Learning rate: GFlowNet's (the task's, else the
profile's), so the two rows differ in objective only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from gfnbench import setting_ranges as ranges
from gfnbench.methods import register_method
from gfnbench.models import LanguageModel, adapters_off
from gfnbench.objectives import (
    action_slots,
    group_advantages,
    grpo_loss,
    k3_kl,
    sampler_action_log_probs,
    terminal_log_reward,
)
from gfnbench.policy import (
    RolloutMethod,
    lora_policy,
    sample_scored,
    trainable_parameters,
)
from gfnbench.sampling import policy_log_probs
from gfnbench.tasks.base import Example, Task
from gfnbench.trained import TrainedModule
from gfnbench.trajectories import Trajectories


@dataclass(frozen=True)
class GRPOConfig:
    lr: float = 1e-4
    samples_per_prompt: int = 8          # the group size G
    prompts_per_step: int = 1
    epochs: int = 1                      # optimizer steps per rollout batch (DeepSeekMath's mu)
    clip_range: float = 0.2
    kl_coef: float = 0.04                # beta of the k3 KL to the base model; 0 skips the reference pass
    scale_by_std: bool = True            # False (with normalise_by_length False): Dr. GRPO
    normalise_by_length: bool = True
    max_grad_norm: float = 1.0
    min_log_reward: float = -99.0
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None
    init: str = "base"                   # "sft": start from the same seed's SFT adapter (warm_start.py)
    iterations: int = 0                  # rollout batches; 0: as many reward evaluations as GFlowNet's budget

    def __post_init__(self):
        if self.samples_per_prompt < 2:
            raise ValueError("GRPO needs samples_per_prompt >= 2 (the baseline is the rest of the group)")
        if self.epochs < 1 or self.iterations < 0 or self.prompts_per_step < 1:
            raise ValueError("GRPO needs epochs >= 1, prompts_per_step >= 1, iterations >= 0")
        ranges.positive(self, "lr", "clip_range")
        ranges.at_least(self, 0, "kl_coef", "max_grad_norm")
        ranges.lora_shape(self)
        ranges.init_choice(self)


@dataclass
class GroupRollout:
    """One on-policy batch and what every epoch on it needs, computed before any update."""

    traj: Trajectories
    slots: Tensor               # [B, L+1] action slots
    old_logp: Tensor | None     # [B, L+1] log-probs at sampling time: the first epoch's, detached (same policy)
    ref_logp: Tensor | None     # [B, L+1] base model (adapters off); None when kl_coef is 0
    advantages: Tensor          # [B]
    score: Tensor               # [B] floored terminal log reward


class GRPOModule(TrainedModule):
    def __init__(self, task: Task, lm: LanguageModel, cfg: GRPOConfig, train_examples: list[Example], seed: int = 0):
        super().__init__(task, lm, cfg, train_examples, seed)
        self.automatic_optimization = False
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed)

    def action_logp(self, model, traj: Trajectories) -> Tensor:
        log_pf, log_pterm = policy_log_probs(model, traj, self.allowed, self.stop_id)
        return sampler_action_log_probs(log_pf, log_pterm, traj.lengths, traj.stopped, self.task.min_len)

    @torch.no_grad()
    def rollout(self, examples: list[Example]) -> GroupRollout:
        traj = sample_scored(self.task, self.policy, self.tokenizer, examples, self.cfg.samples_per_prompt,
                             context=self.context, generator=self.generator, what=f"GRPO iteration {len(self.curve)}")
        with adapters_off(self.policy) as base:
            ref = self.action_logp(base, traj) if self.cfg.kl_coef else None
        score = terminal_log_reward(traj.log_reward, traj.lengths, self.cfg.min_log_reward)
        advantages = group_advantages(score, traj.group, self.cfg.scale_by_std)
        slots = action_slots(traj.lengths, traj.stopped, traj.max_actions + 1)
        return GroupRollout(traj, slots, None, ref, advantages, score)

    def loss(self, ro: GroupRollout) -> Tensor:
        """The rollout's GRPO loss under the current policy (Dr. GRPO's constant: the longest sample's actions).
        The first epoch runs the policy that sampled, so its log-probs, detached, are pi_old: no extra pass."""
        logp = self.action_logp(self.policy, ro.traj)
        if ro.old_logp is None:
            ro.old_logp = logp.detach()
        return grpo_loss(logp, ro.old_logp, ro.ref_logp, ro.advantages, ro.slots, self.cfg.clip_range,
                         self.cfg.kl_coef, self.cfg.normalise_by_length, self.task.max_len + 1)

    def training_step(self, batch, batch_idx):
        ro = self.rollout([self.examples[int(i)] for i in batch])
        opt = self.optimizers()
        self.policy.train()
        losses = []
        for _ in range(self.cfg.epochs):
            loss = self.loss(ro)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=self.cfg.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            losses.append(float(loss.detach()))
        self.record(len(self.curve), ro, sum(losses) / len(losses))   # the iteration (batch_idx restarts on resume)

    def record(self, iteration: int, ro: GroupRollout, loss: float) -> None:
        kl = 0.0
        if ro.ref_logp is not None:
            kl = float(torch.where(ro.slots, k3_kl(ro.old_logp, ro.ref_logp), 0.0).sum(1).mean())
        point = {"step": iteration, "loss": loss, "log_reward": float(ro.score.mean()), "kl": kl,
                 "length": float(ro.traj.lengths.float().mean())}
        self.log_dict({f"train/{k}": float(v) for k, v in point.items() if k != "step"}, on_step=True,
                      prog_bar=True, batch_size=len(ro.score))
        self.curve.append(point)

    def configure_optimizers(self):
        return torch.optim.AdamW(trainable_parameters(self.policy), lr=self.cfg.lr)


@register_method("grpo", "GRPO (LoRA, group-standardised terminal log reward, clipped ratio, k3 KL to the base "
                 "model; Dr. GRPO as a setting)")
class GRPOMethod(RolloutMethod):
    settings_class = GRPOConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        prof = ctx.profile
        self.cfg = self.build_settings(dict(lr=task.training.learning_rate or prof.learning_rate,
                                            samples_per_prompt=prof.samples_per_prompt,
                                            prompts_per_step=prof.prompts_per_step, lora_rank=prof.lora_rank,
                                            lora_alpha=prof.lora_alpha))
        self.iterations = self.cfg.iterations or self.steps
        self.module = GRPOModule(task, lm, self.cfg, task.examples("train"), seed=ctx.seed)

    def config(self) -> dict:
        return {"grpo": asdict(self.cfg), "iterations": self.iterations,
                "iterations_rule": "profile.train_steps x task.training.steps_multiplier rollout batches of "
                                   "prompts_per_step x samples_per_prompt: GFlowNet's reward evaluations"}
