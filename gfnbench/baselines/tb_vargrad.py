"""VarGrad trajectory balance with replay, after "Trajectory Balance with Asynchrony" (TBA; Bartoldson et al.,
NeurIPS 2025), itself after VarGrad (Richter et al. 2020) and its use for LM fine-tuning. A distribution matcher
of the GFlowNet family: log Z is not learned but estimated for each prompt from the batch,

    log Z_est(x) = mean_k [log R_k / T - log pi(y_k|x)]   (detached),
    loss = mean_k huber(log Z_est(x) + log pi(y_k|x) - log R_k / T),

whose gradient is that of the batch variance of log pi - log R / T: zero exactly when pi ∝ R^(1/T) on the
samples. R is the task's terminal reward, T the task's reward temperature (GFlowNet's ramp), -inf floored.

The reference prior is off by default, and why: TBA targets pi_ref(y) exp(r(y) / beta) because its r is a
verifier score that says nothing about which answers are likely; here the task's reward already is the
unnormalised target (arith, infill and continuation put the base LM's likelihood into it), so multiplying by
pi_ref again would count the base model twice, and on rng it would keep the base model's ratios among the
equally rewarded integers (GX-Chen et al. 2025) instead of the uniform target. `--tb_vargrad.reference true`
adds + log pi_ref(y|x) to the target (TBA's form with beta = T), with pi_ref the policy with adapters off.

Replay (TBA's asynchronous buffer, made synchronous): every step scores `samples_per_prompt` fresh on-policy
samples (these are the reward evaluations, GFlowNet's budget) and adds them to a per-prompt buffer (FIFO,
`buffer_capacity`); the step's batch is those plus round(replay_share x samples_per_prompt) stored samples,
each drawn by reward (softmax of log R) with probability `replay_reward_share`, else uniformly among the
`replay_recent` newest, so replay favours recent and high-reward samples. Replayed rows carry their stored
rewards (no new evaluation); VarGrad's estimate is the mean over all rows of the prompt, fresh and replayed
(TB holds off-policy, so any full-support mix of samples has the same optimum). The penalty is GFlowNet's
Huber-bounded square (delta 1: a floored zero reward gives residuals of ~99; `huber_delta null` for TBA's r^2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from gfnbench import setting_ranges as ranges
from gfnbench.devices import model_device
from gfnbench.losses import balance_penalty, reward_temperature
from gfnbench.methods import register_method
from gfnbench.models import LanguageModel, adapters_off
from gfnbench.objectives import (
    replay_probabilities,
    terminal_log_reward,
    vargrad_log_z,
    vargrad_residual,
)
from gfnbench.policy import (
    PromptStepMethod,
    gflownet_family_defaults,
    lora_policy,
    lr_multiplier,
    sample_scored,
    sequence_log_prob_of,
    stepwise_schedule,
    trainable_parameters,
    trajectories_from_states,
)
from gfnbench.sampling import encode
from gfnbench.tasks.base import Example, Task
from gfnbench.trained import TrainedModule
from gfnbench.trajectories import Trajectories, right_pad


@dataclass(frozen=True)
class VarGradConfig:
    lr: float = 1e-4
    samples_per_prompt: int = 8          # fresh, scored samples per prompt and step (the VarGrad group's core)
    replay_share: float = 0.5            # replayed rows per prompt = round(share x samples_per_prompt)
    buffer_capacity: int = 64            # per prompt, oldest out first
    replay_recent: int = 16
    replay_reward_share: float = 0.5
    reference: bool = False              # + log pi_ref in the target (TBA's prior); see the module docstring
    reward_temperature: tuple[float, float, int] = (1.0, 1.0, 0)
    huber_delta: float | None = 1.0      # None: squared residuals (TBA)
    warmup_steps: int = 20
    decay_to: float = 1.0
    total_steps: int = 0                 # set by the method (the lr decay's horizon)
    min_log_reward: float = -99.0
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None
    init: str = "base"                   # "sft": start from the same seed's SFT adapter (warm_start.py)

    def __post_init__(self):
        if self.samples_per_prompt < 2:
            raise ValueError("tb_vargrad needs samples_per_prompt >= 2 (log Z is estimated from the group)")
        if self.replay_share < 0 or not 0 <= self.replay_reward_share <= 1 or self.buffer_capacity < 1:
            raise ValueError("tb_vargrad needs replay_share >= 0, replay_reward_share in [0, 1], buffer_capacity >= 1")
        ranges.positive(self, "lr", "huber_delta")
        ranges.at_least(self, 0, "warmup_steps", "decay_to", "total_steps")
        ranges.at_least(self, 1, "replay_recent")
        ranges.temperature_ramp(self)
        ranges.lora_shape(self)
        ranges.init_choice(self)


@dataclass
class Stored:
    """A replayable sample: its state sequence and the log reward of every prefix, and when it was sampled."""

    tokens: list[int]
    is_action: list[bool]
    stopped: bool
    log_reward: list[float]
    step: int


class RecentRewardReplay:
    """Per-prompt FIFO of samples; draws follow `objectives.replay_probabilities` (recent or high-reward)."""

    def __init__(self, capacity: int, recent: int, reward_share: float):
        self.capacity, self.recent, self.reward_share = capacity, recent, reward_share
        self.items: dict[str, list[Stored]] = {}

    def add(self, key: str, items: list[Stored]) -> None:
        stored = self.items.setdefault(key, [])
        stored.extend(items)
        del stored[: max(0, len(stored) - self.capacity)]

    def sample(self, key: str, n: int, step: int, generator: torch.Generator) -> list[Stored]:
        stored = self.items.get(key, [])
        if not stored or n <= 0:
            return []
        final = torch.tensor([s.log_reward[-1] for s in stored], device=generator.device)
        age = torch.tensor([step - s.step for s in stored], device=generator.device)
        probs = replay_probabilities(final, age, self.recent, self.reward_share)
        return [stored[i] for i in torch.multinomial(probs, n, replacement=True, generator=generator).tolist()]


def stored_rows(traj: Trajectories, step: int) -> list[Stored]:
    """The batch's rows as replayable samples (log rewards kept untempered, -inf included)."""
    rows = []
    for b in range(len(traj)):
        width, n = int(traj.state_mask[b].sum()), int(traj.lengths[b])
        rows.append(Stored(traj.state_ids[b, :width].tolist(), traj.is_action[b, :width].tolist(),
                           bool(traj.stopped[b]), traj.log_reward[b, : n + 1].tolist(), step))
    return rows


class VarGradModule(TrainedModule):
    def __init__(self, task: Task, lm: LanguageModel, cfg: VarGradConfig, train_examples: list[Example],
                 seed: int = 0):
        super().__init__(task, lm, cfg, train_examples, seed)
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed)
        self.buffer = RecentRewardReplay(cfg.buffer_capacity, cfg.replay_recent, cfg.replay_reward_share)

    def own_training_state(self) -> dict:
        return {"replay": {k: [asdict(s) for s in v] for k, v in self.buffer.items.items()}}

    def load_own_training_state(self, state: dict) -> None:
        self.buffer.items = {k: [Stored(**s) for s in v] for k, v in state["replay"].items()}

    def sequence_logp(self, model, traj: Trajectories) -> Tensor:
        return sequence_log_prob_of(model, traj, self.task, self.allowed, self.stop_id)

    @torch.no_grad()
    def fresh(self, ex: Example) -> Trajectories:
        """`samples_per_prompt` on-policy samples of one prompt, scored (the step's reward evaluations)."""
        return sample_scored(self.task, self.policy, self.tokenizer, [ex], self.cfg.samples_per_prompt,
                             context=self.context, generator=self.generator, what=f"tb_vargrad step {self.global_step}")

    def batch_for(self, ex: Example) -> tuple[Trajectories, int]:
        """Fresh samples plus replayed ones of the same prompt as one batch (group 0), and how many are fresh."""
        prompt, step = self.task.prompt(ex), int(self.global_step)
        new = stored_rows(self.fresh(ex), step)
        n_replay = round(self.cfg.replay_share * self.cfg.samples_per_prompt)
        rows = new + self.buffer.sample(prompt, n_replay, step, self.generator)
        self.buffer.add(prompt, new)
        traj = trajectories_from_states(prompt, encode(self.tokenizer, [prompt])[0],
                                        [(r.tokens, r.is_action, r.stopped) for r in rows], self.tokenizer,
                                        model_device(self.policy))
        return traj.with_log_reward(right_pad([r.log_reward for r in rows], 0.0, torch.float32, traj.device)), len(new)

    def loss(self, traj: Trajectories) -> tuple[Tensor, dict]:
        temperature = reward_temperature(int(self.global_step), *self.cfg.reward_temperature)
        log_r = terminal_log_reward(traj.log_reward / temperature, traj.lengths, self.cfg.min_log_reward)
        ref = None
        if self.cfg.reference:
            with torch.no_grad(), adapters_off(self.policy) as base:
                ref = self.sequence_logp(base, traj)
        self.policy.train()
        logp = self.sequence_logp(self.policy, traj)
        residual = vargrad_residual(log_r, logp, ref, traj.group)
        loss = balance_penalty(residual, self.cfg.huber_delta).mean()
        return loss, {"log_z": float(vargrad_log_z(log_r, logp, ref, traj.group).mean()),
                      "residual_std": float(residual.detach().std()) if len(traj) > 1 else 0.0}

    def training_step(self, batch, batch_idx):
        ex = self.examples[int(batch[0])]
        traj, n_fresh = self.batch_for(ex)
        loss, stats = self.loss(traj)
        fresh_r = terminal_log_reward(traj.log_reward[:n_fresh], traj.lengths[:n_fresh], self.cfg.min_log_reward)
        point = {"step": int(self.global_step), "loss": float(loss.detach()), "log_reward": float(fresh_r.mean()),
                 "replayed": len(traj) - n_fresh, **stats}
        self.log_dict({f"train/{k}": float(v) for k, v in point.items() if k != "step"}, on_step=True,
                      prog_bar=True, batch_size=len(traj))
        self.curve.append(point)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(trainable_parameters(self.policy), lr=self.cfg.lr)
        return stepwise_schedule(
            opt, lambda step: lr_multiplier(step, self.cfg.warmup_steps, self.cfg.total_steps, self.cfg.decay_to))


@register_method("tb_vargrad", "VarGrad TB with recent/high-reward replay (TBA, Bartoldson et al. 2025): log Z "
                 "estimated per prompt from its samples")
class VarGradMethod(PromptStepMethod):
    settings_class = VarGradConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        self.cfg = self.build_settings({**gflownet_family_defaults(task, ctx.profile, self.steps),
                                        "total_steps": self.steps})
        self.module = VarGradModule(task, lm, self.cfg, task.examples("train"), seed=ctx.seed)

    def budget_summary(self) -> str:
        return (f"{self.steps} steps x {self.cfg.samples_per_prompt} fresh samples "
                f"(+ {round(self.cfg.replay_share * self.cfg.samples_per_prompt)} replayed)")

    def config(self) -> dict:
        return {"tb_vargrad": asdict(self.cfg), "train_steps": self.steps,
                "prompts_per_step": self.ctx.profile.prompts_per_step}
