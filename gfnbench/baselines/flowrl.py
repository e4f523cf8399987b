"""FlowRL (Zhu et al., "FlowRL: Matching Reward Distributions for LLM Reasoning", ICLR 2026; a recipe in verl): a
distribution matcher of the GFlowNet family, trajectory balance on length-normalised log-probs:

    w * (log Z_phi(x) + log pi(y|x) / |y| - beta r_hat(x, y) - log pi_ref(y|x) / |y|)^2,

w = clip((pi / pi_old)^(1/|y|), 1 - eps, 1 + eps), detached (on-policy it is 1; it weighs the later epochs of a
batch). log Z_phi is an MLP on the mean of the prompt's last hidden states (base model, adapters off, detached).

How it maps to this repo. FlowRL's r is a verifier score in [0, 1]; here a task's reward is the unnormalised
target density itself, so r = the task's terminal log reward divided by the task's reward temperature (as
GFlowNet's), -inf floored at `min_log_reward`, and r_hat = r minus its group mean (the `samples_per_prompt`
samples of the prompt), not divided by the group's std unless `scale_by_std`. beta = 15 (FlowRL's default):
the balanced policy is pi(y) ∝ pi_ref(y) exp(|y| (beta r_hat - log Z)), which for samples of equal length is
pi_ref x R^beta, not R; `beta 1 --flowrl.reference false` (with equal lengths) targets R itself. pi_ref is the
policy with adapters off. |y| counts the sample's actions: its tokens and the stop when the policy chose it.
Because the reference enters as a prior, FlowRL keeps the base model's ratios among answers of equal reward
(GX-Chen et al. 2025): on rng it cannot flatten the base model's preferences among the valid integers.

One iteration: sample the group(s) on-policy, score them, then `epochs` updates (FlowRL's mini-batch updates on
one rollout; 1 by default, so the weight stays 1 and the cost per sample is GFlowNet's). The squared residual is
FlowRL's (`huber_delta` bounds it like GFlowNet's row if set).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from gfnbench import setting_ranges as ranges
from gfnbench.losses import balance_penalty, reward_temperature
from gfnbench.methods import register_method
from gfnbench.models import LanguageModel, adapters_off
from gfnbench.objectives import (
    clipped_importance_weight,
    flowrl_residual,
    group_advantages,
    terminal_log_reward,
    weighted_mean,
)
from gfnbench.policy import (
    RolloutMethod,
    gflownet_family_defaults,
    lora_policy,
    lr_multiplier,
    sample_scored,
    sequence_log_prob_of,
    stepwise_schedule,
    trainable_parameters,
)
from gfnbench.sampling import positions_from_mask
from gfnbench.tasks.base import Example, Task
from gfnbench.trained import TrainedModule
from gfnbench.trajectories import Trajectories


@dataclass(frozen=True)
class FlowRLConfig:
    lr: float = 1e-4
    logz_lr: float = 1e-3
    logz_layers: int = 3                 # FlowRL's projection: (Linear, GELU, LayerNorm) x 2, then Linear
    beta: float = 15.0
    reference: bool = True               # the log pi_ref / |y| prior (base model, adapters off)
    scale_by_std: bool = False           # r_hat = (r - group mean) / group std instead of r - group mean
    importance_clip: float = 0.2
    epochs: int = 1
    samples_per_prompt: int = 8
    prompts_per_step: int = 1
    reward_temperature: tuple[float, float, int] = (1.0, 1.0, 0)
    huber_delta: float | None = None     # None: FlowRL's squared residual
    warmup_steps: int = 20
    decay_to: float = 1.0
    max_grad_norm: float = 1.0
    min_log_reward: float = -99.0
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None
    init: str = "base"                   # "sft": start from the same seed's SFT adapter (warm_start.py)
    iterations: int = 0                  # rollout batches; 0: GFlowNet's reward evaluations

    def __post_init__(self):
        if self.samples_per_prompt < 2:
            raise ValueError("FlowRL needs samples_per_prompt >= 2 (the reward is centred on its group)")
        if self.epochs < 1 or self.iterations < 0 or self.logz_layers < 1 or self.prompts_per_step < 1:
            raise ValueError("FlowRL needs epochs >= 1, logz_layers >= 1, prompts_per_step >= 1, iterations >= 0")
        ranges.positive(self, "lr", "logz_lr", "beta", "importance_clip", "huber_delta")
        ranges.at_least(self, 0, "warmup_steps", "decay_to", "max_grad_norm")
        ranges.temperature_ramp(self)
        ranges.lora_shape(self)
        ranges.init_choice(self)


class FlowLogZ(torch.nn.Module):
    """log Z_phi(x): an MLP on the prompt's mean last hidden state, the input layer-normalised (no parameters) so
    the head's steps do not scale with the model's hidden magnitude (GFlowNet's log Z lesson), and the output
    layer zero-initialised so training starts from log Z = 0."""

    def __init__(self, hidden: int, layers: int = 3):
        super().__init__()
        blocks = []
        for _ in range(layers - 1):
            blocks += [torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.LayerNorm(hidden)]
        out = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(out.weight)
        torch.nn.init.zeros_(out.bias)
        self.net = torch.nn.Sequential(*blocks, out)

    def forward(self, features: Tensor) -> Tensor:
        features = torch.nn.functional.layer_norm(features.float(), features.shape[-1:])
        return self.net(features).squeeze(-1)


@dataclass
class FlowRollout:
    traj: Trajectories
    n_actions: Tensor          # [B] |y|
    old_logp: Tensor | None    # [B] log pi_old(y|x): the first epoch's, detached (the policy that sampled)
    ref_logp: Tensor | None    # [B] log pi_ref(y|x)
    reward_hat: Tensor         # [B] group-centred tempered log reward
    features: Tensor           # [B, H] prompt features for log Z
    score: Tensor              # [B] untempered floored log reward (for logs)


class FlowRLModule(TrainedModule):
    def __init__(self, task: Task, lm: LanguageModel, cfg: FlowRLConfig, train_examples: list[Example],
                 seed: int = 0, total_steps: int = 1):
        super().__init__(task, lm, cfg, train_examples, seed)
        self.automatic_optimization = False
        self.total_steps = total_steps
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed)
        self.log_z = FlowLogZ(lm.model.config.hidden_size, cfg.logz_layers)
        self.features_cache: dict[str, Tensor] = {}

    def sequence_logp(self, model, traj: Trajectories) -> Tensor:
        return sequence_log_prob_of(model, traj, self.task, self.allowed, self.stop_id)

    @torch.no_grad()
    def prompt_features(self, traj: Trajectories) -> Tensor:
        """[B, H] the mean last hidden state over each row's prompt tokens (adapters off), once per prompt."""
        rows = []
        for b, prompt in enumerate(traj.prompts):
            if prompt not in self.features_cache:
                ids, mask = traj.prompt_ids[b:b + 1], traj.prompt_mask[b:b + 1]
                with adapters_off(self.policy) as base:
                    out = base(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                               output_hidden_states=True)
                self.features_cache[prompt] = out.hidden_states[-1][0][mask[0].bool()].float().mean(0)
            rows.append(self.features_cache[prompt])
        return torch.stack(rows)

    @torch.no_grad()
    def rollout(self, examples: list[Example]) -> FlowRollout:
        traj = sample_scored(self.task, self.policy, self.tokenizer, examples, self.cfg.samples_per_prompt,
                             context=self.context, generator=self.generator,
                             what=f"FlowRL iteration {len(self.curve)}")
        with adapters_off(self.policy) as base:
            ref = self.sequence_logp(base, traj) if self.cfg.reference else None
        temperature = reward_temperature(len(self.curve), *self.cfg.reward_temperature)
        r = terminal_log_reward(traj.log_reward / temperature, traj.lengths, self.cfg.min_log_reward)
        return FlowRollout(traj, traj.lengths + traj.stopped.long(), None, ref,
                           group_advantages(r, traj.group, self.cfg.scale_by_std), self.prompt_features(traj),
                           terminal_log_reward(traj.log_reward, traj.lengths, self.cfg.min_log_reward))

    def loss(self, ro: FlowRollout) -> tuple[Tensor, dict]:
        logp = self.sequence_logp(self.policy, ro.traj)
        if ro.old_logp is None:
            ro.old_logp = logp.detach()
        log_z = self.log_z(ro.features)
        residual = flowrl_residual(log_z, logp, ro.ref_logp, ro.n_actions, ro.reward_hat, self.cfg.beta)
        weight = clipped_importance_weight(logp, ro.old_logp, ro.n_actions, self.cfg.importance_clip)
        loss = weighted_mean(balance_penalty(residual, self.cfg.huber_delta), weight)
        return loss, {"loss": float(loss.detach()), "log_z": float(log_z.detach().mean()),
                      "importance_weight": float(weight.mean())}

    def training_step(self, batch, batch_idx):
        ro = self.rollout([self.examples[int(i)] for i in batch])
        opt, sched = self.optimizers(), self.lr_schedulers()
        self.policy.train()
        stats = []
        for _ in range(self.cfg.epochs):
            loss, st = self.loss(ro)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=self.cfg.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            stats.append(st)
        sched.step()
        point = {"step": len(self.curve), "log_reward": float(ro.score.mean()),
                 **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}}
        self.log_dict({f"train/{k}": v for k, v in point.items() if k != "step"}, on_step=True, prog_bar=True,
                      batch_size=len(ro.score))
        self.curve.append(point)

    def configure_optimizers(self):
        opt = torch.optim.AdamW([{"params": trainable_parameters(self.policy), "lr": self.cfg.lr},
                                 {"params": self.log_z.parameters(), "lr": self.cfg.logz_lr}])
        return stepwise_schedule(
            opt, lambda step: lr_multiplier(step, self.cfg.warmup_steps, self.total_steps, self.cfg.decay_to))


@register_method("flowrl", "FlowRL (Zhu et al. 2026): length-normalised TB to pi_ref x exp(beta r_hat), "
                 "prompt-conditioned log Z, clipped importance weight")
class FlowRLMethod(RolloutMethod):
    settings_class = FlowRLConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        prof = ctx.profile
        self.cfg = self.build_settings({**gflownet_family_defaults(task, prof, self.steps),
                                        "prompts_per_step": prof.prompts_per_step})
        self.iterations = self.cfg.iterations or self.steps
        self.module = FlowRLModule(task, lm, self.cfg, task.examples("train"), seed=ctx.seed,
                                   total_steps=self.iterations)

    def config(self) -> dict:
        return {"flowrl": asdict(self.cfg), "iterations": self.iterations}
