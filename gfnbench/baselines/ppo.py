"""PPO fine-tuning with a KL penalty to the base model (Ziegler et al. 2019; the paper's PPO baseline), no TRL.

One iteration: sample a batch on-policy (the shared lock-step sampler, with the task's tool, mask and lengths),
score the final state with the task's untempered log reward (the base model, adapters off, as GFlowNet's
reward), then take `ppo_epochs` clipped-surrogate steps on it.

Actions and rewards. A trajectory's actions are its n non-stop tokens, then the stop action when the policy
chose to stop (log q(stop | s_n)); a stop forced at max_len is no choice and no action. Every action's
probability is the sampler's: the masked log-softmax at temperature 1, with the stop blocked (renormalised
away) before min_len actions, so the importance ratios are those of the distribution that sampled. The reward
of action t is -kl_coef * (log q_old(a_t) - log p_ref(a_t)) (sampled per-token KL to the base model, which is
the policy with adapters off), plus, on the last action, the task's terminal log reward floored at
`min_log_reward` (-inf, an invalid answer, becomes -99; finite rewards are not clamped) and whitened over the
batch. Tool-inserted tokens are state, not actions: they get no reward, no log-prob and no value of their own.

Value head: a linear map of the policy's last-layer hidden state (adapters on) at the state each action is taken
from, sharing the LoRA body with the policy (as TRL's value-head model). Advantages: GAE (gamma 1, lambda 0.95),
whitened over the batch's actions.

Settings follow the paper's PPO (docs/paper.md#arithmetic-baselines: TRL, lr 1.41e-5, init KL coefficient 0.2 with the
adaptive controller, target KL 0.1, horizon 10000), except 4 PPO epochs over each batch instead of 10 and one
mini-batch (the whole rollout) per epoch, which keeps a CPU run short.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from gfnbench import setting_ranges as ranges
from gfnbench.methods import Budget, register_method
from gfnbench.models import LanguageModel, ScalarHead, adapters_off
from gfnbench.objectives import terminal_log_reward
from gfnbench.policy import (
    PolicyMethod,
    fit_on_prompts,
    lora_policy,
    sample_scored,
    trainable_parameters,
)
from gfnbench.sampling import positions_from_mask
from gfnbench.tasks.base import Example, Task
from gfnbench.trained import TrainedModule
from gfnbench.trajectories import Trajectories


@dataclass(frozen=True)
class PPOConfig:
    lr: float = 1.41e-5               # the paper's TRL setting
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True          # Ziegler et al.'s proportional controller
    target_kl: float = 0.1            # per-sequence KL(policy || base) in nats the controller steers to
    kl_horizon: int = 10000
    ppo_epochs: int = 4               # paper (TRL): 10
    minibatches: int = 1              # optimizer steps per epoch; the rollout batch split evenly
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0             # entropy is logged, not rewarded (as TRL)
    gamma: float = 1.0
    lam: float = 0.95
    whiten_scores: bool = True        # terminal log rewards -> zero mean, unit variance over the batch
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0
    samples_per_prompt: int = 8
    prompts_per_step: int = 1         # prompts per rollout batch (batch = prompts x samples)
    min_log_reward: float = -99.0
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None   # None: the architecture's defaults (models.py)
    init: str = "base"                   # "sft": start from the same seed's SFT adapter (warm_start.py)
    iterations: int = 0               # rollout batches; 0: as many reward evaluations as GFlowNet's budget

    def __post_init__(self):
        if self.iterations < 0 or self.ppo_epochs < 1 or self.minibatches < 1 or self.samples_per_prompt < 1:
            raise ValueError("PPO needs iterations >= 0, ppo_epochs >= 1, minibatches >= 1, samples_per_prompt >= 1")
        ranges.positive(self, "lr", "target_kl", "clip_range", "clip_range_value")
        ranges.at_least(self, 0, "init_kl_coef", "vf_coef", "ent_coef", "max_grad_norm")
        ranges.at_least(self, 1, "kl_horizon", "prompts_per_step")
        ranges.probability(self, "gamma", "lam")
        ranges.lora_shape(self)
        ranges.init_choice(self)


# ---------------------------------------------------------------------------------------------- pieces

class ValueHead(ScalarHead):
    """V(s) from a hidden state; zero-initialised so every value starts at the whitened scores' mean, 0."""


class KLController:
    """kl_coef *= 1 + clip(KL / target - 1, +-0.2) * n / horizon (Ziegler et al. 2019); fixed when not adaptive."""

    def __init__(self, init: float, target: float, horizon: int, adaptive: bool = True):
        self.value, self.target, self.horizon, self.adaptive = init, target, horizon, adaptive

    def update(self, kl: float, n_samples: int) -> None:
        if not self.adaptive:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


def action_mask(traj: Trajectories) -> Tensor:
    """[B, L+1] True for real actions: slots 0..n-1 (tokens) and slot n when the policy chose to stop."""
    j = torch.arange(traj.max_actions + 1, device=traj.device)[None, :]
    return j < (traj.lengths + traj.stopped.long())[:, None]


def action_ids(traj: Trajectories, stop_id: int) -> Tensor:
    """[B, L+1] token of every action slot: the t-th action token for t < n, the stop token from n on."""
    S = traj.state_ids.shape[1]
    pos = traj.action_positions().clamp(max=max(S - 1, 0))
    tokens = traj.state_ids.gather(1, pos) if S else traj.state_ids.new_zeros(len(traj), traj.max_actions)
    ids = torch.cat([tokens, torch.full((len(traj), 1), stop_id, dtype=torch.long, device=traj.device)], dim=1)
    j = torch.arange(traj.max_actions + 1, device=traj.device)[None, :]
    return torch.where(j < traj.lengths[:, None], ids, torch.full_like(ids, stop_id))


@dataclass
class ActionPass:
    logp: Tensor          # [B, L+1] log q(a_t | s_t), 0 where no action
    entropy: Tensor       # [B, L+1] entropy of q(. | s_t), 0 where no action
    hidden: Tensor | None  # [B, L+1, H] last-layer hidden state at s_t


def action_forward(model, traj: Trajectories, allowed: Tensor | None, stop_id: int, min_len: int,
                   hidden: bool = False) -> ActionPass:
    """Teacher-forced log-probs (with gradients) of every action, and the hidden states the value head reads.

    Slot t is read at the position after the first `state_ends[t]` state tokens, i.e. at s_t with the tool's
    outputs in context. The distribution is the sampler's: allowed-token mask, stop blocked while t < min_len.
    """
    P, S = traj.prompt_ids.shape[1], traj.state_ids.shape[1]
    input_ids = torch.cat([traj.prompt_ids, traj.state_ids], dim=1)
    mask = torch.cat([traj.prompt_mask, traj.state_mask], dim=1)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                logits_to_keep=S + 1, output_hidden_states=hidden)
    logits = out.logits[:, -(S + 1):].float()                         # [:, k]: after k state tokens
    at = traj.state_ends()                                            # [B, L+1]
    logits = logits.gather(1, at[:, :, None].expand(-1, -1, logits.shape[-1]))
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    blocked = torch.zeros(logits.shape[1:], dtype=torch.bool, device=logits.device)
    blocked[:min_len, stop_id] = True                                 # the sampler's min-length rule
    logits = logits.masked_fill(blocked, float("-inf"))
    logp_all = torch.log_softmax(logits, dim=-1)
    acts = action_mask(traj)
    logp = logp_all.gather(-1, action_ids(traj, stop_id)[:, :, None]).squeeze(-1)
    logp = torch.where(acts, logp, torch.zeros_like(logp))
    finite = logp_all.masked_fill(~torch.isfinite(logp_all), 0.0)    # 0 * -inf would be NaN (and its grad)
    entropy = -(finite.exp() * finite).sum(-1) * acts
    feats = None
    if hidden:
        last = out.hidden_states[-1][:, P - 1:]                        # [B, S+1, H], same indexing as logits
        feats = last.gather(1, at[:, :, None].expand(-1, -1, last.shape[-1]))
    return ActionPass(logp, entropy, feats)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """(advantages, returns) [B, T] by generalised advantage estimation; the value after the last action is 0."""
    B, T = rewards.shape
    mask = mask.float()
    advantages = torch.zeros_like(rewards)
    running = rewards.new_zeros(B)
    next_value = rewards.new_zeros(B)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t] * mask[:, t]
    return advantages, (advantages + values) * mask


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Zero mean, unit variance over the masked entries (all entries when no mask); 0 elsewhere."""
    mask = torch.ones_like(x) if mask is None else mask.float()
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


@dataclass
class Rollout:
    """One batch of on-policy samples with everything the PPO epochs need, computed before any update."""

    traj: Trajectories
    mask: Tensor          # [B, L+1] action slots
    logp: Tensor          # [B, L+1] log q_old
    values: Tensor        # [B, L+1] V_old
    advantages: Tensor    # [B, L+1]
    returns: Tensor       # [B, L+1]
    score: Tensor         # [B] terminal log reward, floored (what the policy is rewarded for)
    kl: Tensor            # [B] sum over actions of log q_old - log p_ref
    kl_coef: float


# ---------------------------------------------------------------------------------------------- module

class PPOModule(TrainedModule):
    def __init__(self, task: Task, lm: LanguageModel, cfg: PPOConfig, train_examples: list[Example],
                 seed: int = 0):
        super().__init__(task, lm, cfg, train_examples, seed)
        self.automatic_optimization = False
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed)
        self.value_head = ValueHead(lm.model.config.hidden_size)
        self.kl_ctl = KLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon, cfg.adaptive_kl)

    def own_training_state(self) -> dict:
        return {"kl_coef": self.kl_ctl.value}

    def load_own_training_state(self, state: dict) -> None:
        self.kl_ctl.value = state["kl_coef"]

    def forward_actions(self, traj: Trajectories, hidden: bool = False) -> ActionPass:
        return action_forward(self.policy, traj, self.allowed, self.stop_id, self.task.min_len, hidden)

    @torch.no_grad()
    def rollout(self, examples: list[Example]) -> Rollout:
        cfg = self.cfg
        traj = sample_scored(self.task, self.policy, self.tokenizer, examples, cfg.samples_per_prompt,
                             context=self.context, generator=self.generator, what=f"PPO iteration {len(self.curve)}")
        score = terminal_log_reward(traj.log_reward, traj.lengths, cfg.min_log_reward)
        old = self.forward_actions(traj, hidden=True)
        values = self.value_head(old.hidden)
        with adapters_off(self.policy) as base:
            ref = action_forward(base, traj, self.allowed, self.stop_id, self.task.min_len)
        mask = action_mask(traj)
        kl_tok = (old.logp - ref.logp) * mask
        kl_coef = self.kl_ctl.value
        rewards = -kl_coef * kl_tok
        last = (traj.lengths + traj.stopped.long() - 1).clamp(min=0)
        terminal = whiten(score) if cfg.whiten_scores else score
        rewards = rewards.scatter_add(1, last[:, None], terminal[:, None])
        values = values * mask
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        return Rollout(traj, mask, old.logp, values, advantages, returns, score, kl_tok.sum(1), kl_coef)

    def ppo_loss(self, ro: Rollout, idx: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Clipped surrogate + vf_coef * clipped value loss on the rows `idx` of a rollout."""
        cfg = self.cfg
        cur = self.forward_actions(ro.traj.select(idx), hidden=True)
        values = self.value_head(cur.hidden)
        mask = ro.mask[idx].float()
        adv, old_logp, old_v, ret = ro.advantages[idx], ro.logp[idx], ro.values[idx], ro.returns[idx]
        log_ratio = (cur.logp - old_logp) * mask
        ratio = log_ratio.exp()
        surrogate = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
        policy_loss = masked_mean(surrogate, mask)
        v_clipped = old_v + (values - old_v).clamp(-cfg.clip_range_value, cfg.clip_range_value)
        value_loss = 0.5 * masked_mean(torch.max((values - ret) ** 2, (v_clipped - ret) ** 2), mask)
        entropy = masked_mean(cur.entropy, mask)
        loss = policy_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
        with torch.no_grad():
            stats = {"policy_loss": float(policy_loss), "value_loss": float(value_loss), "entropy": float(entropy),
                     "clip_frac": float(masked_mean(((ratio - 1).abs() > cfg.clip_range).float(), mask)),
                     "approx_kl": float(masked_mean(ratio - 1 - log_ratio, mask)), "loss": float(loss)}
        return loss, stats

    def minibatches(self, n: int) -> list[Tensor]:
        if self.cfg.minibatches <= 1:
            return [torch.arange(n, device=self.generator.device)]
        return list(torch.randperm(n, generator=self.generator, device=self.generator.device)
                    .chunk(self.cfg.minibatches))

    def training_step(self, batch, batch_idx):
        examples = [self.examples[int(i)] for i in batch]
        ro = self.rollout(examples)
        opt = self.optimizers()
        self.policy.train()
        stats = []
        for _ in range(self.cfg.ppo_epochs):
            for idx in self.minibatches(len(ro.score)):
                loss, st = self.ppo_loss(ro, idx)
                opt.zero_grad()
                self.manual_backward(loss)
                self.clip_gradients(opt, gradient_clip_val=self.cfg.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
                stats.append(st)
        self.kl_ctl.update(float(ro.kl.mean()), len(ro.score))
        self.record(len(self.curve), ro, stats)      # the iteration (batch_idx restarts on resume)

    def record(self, iteration: int, ro: Rollout, stats: list[dict]) -> None:
        """Log this iteration: rollout numbers (before the update) and means over the PPO epochs."""
        point = {"step": iteration, "log_reward": float(ro.score.mean()), "reward": float(ro.score.mean()),
                 "kl": float(ro.kl.mean()), "kl_coef": ro.kl_coef,
                 "length": float(ro.traj.lengths.float().mean())}
        point.update({k: sum(s[k] for s in stats) / len(stats) for k in stats[0]})
        n = len(ro.score)
        self.log_dict({f"train/{k}": float(v) for k, v in point.items() if k not in ("step", "reward", "kl")},
                      on_step=True, batch_size=n)
        self.log_dict({"train/reward": point["reward"], "train/kl": point["kl"]}, on_step=True, prog_bar=True,
                      batch_size=n)
        self.curve.append(point)

    def configure_optimizers(self):
        return torch.optim.AdamW(trainable_parameters(self.policy, self.value_head), lr=self.cfg.lr)


def fit_ppo(module: PPOModule, ctx, iterations: int, callbacks: list | None = None) -> None:
    """`iterations` rollout batches, each of `prompts_per_step` seeded training prompts."""
    fit_on_prompts(module, ctx, iterations, module.cfg.prompts_per_step, callbacks, max_epochs=1,
                   limit_val_batches=0)


@register_method("ppo", "PPO (LoRA, value head, adaptive KL penalty to the base model, terminal task log reward)")
class PPOMethod(PolicyMethod):
    settings_class = PPOConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        prof = ctx.profile
        self.cfg = self.build_settings(dict(samples_per_prompt=prof.samples_per_prompt,
                                            prompts_per_step=prof.prompts_per_step, lora_rank=prof.lora_rank,
                                            lora_alpha=prof.lora_alpha))
        self.iterations = self.cfg.iterations or self.steps
        self.module = PPOModule(task, lm, self.cfg, task.examples("train"), seed=ctx.seed)

    def fit(self) -> dict:
        return self.train_on_prompts(self.iterations, self.cfg.prompts_per_step,
                                     self.cfg.prompts_per_step * self.cfg.samples_per_prompt, max_epochs=1,
                                     limit_val_batches=0)

    def optimizer_steps(self) -> int:
        return self.iterations * self.cfg.ppo_epochs * self.cfg.minibatches

    def budget(self) -> Budget:
        return Budget(self.iterations * self.cfg.prompts_per_step * self.cfg.samples_per_prompt, self.optimizer_steps(),
                      f"{self.iterations} iterations x {self.cfg.samples_per_prompt} samples, "
                      f"{self.cfg.ppo_epochs} PPO epochs each")

    def config(self) -> dict:
        return {"ppo": asdict(self.cfg), "iterations": self.iterations,
                "iterations_rule": "profile.train_steps x task.training.steps_multiplier: as many reward "
                                   "evaluations as GFlowNet's optimizer steps (prompts_per_step x "
                                   "samples_per_prompt each)",
                "optimizer_steps": self.optimizer_steps()}
