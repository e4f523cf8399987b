"""GFlowNet fine-tuning (paper §3; docs/paper.md#the-method): its settings, its LightningModule and the row that
trains it, shared by the gflownet rows (gflownet.py) and gflownet_mstep (baselines/mstep.py).

One step: pick a training prompt, draw a batch of trajectories from one behaviour policy (on-policy, tempered
with T ~ U[0.5, 2], or replay), score every prefix with the reward model (the same network, adapters off),
recompute the policy's log-probs by teacher forcing, and minimise modified SubTB (or TB with a learned log Z)
on the tempered rewards. The buffer keeps untempered rewards; the reward temperature anneals linearly.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from gfnbench import setting_ranges as ranges
from gfnbench.buffer import BufferItem, ReplayBuffer
from gfnbench.devices import model_device, rank_seed
from gfnbench.losses import (
    check_log_reward,
    reward_temperature,
    subtb_terms,
    tb_loss,
)
from gfnbench.models import LanguageModel, ScalarHead, adapters_off, add_lora
from gfnbench.objectives import terminal_log_reward
from gfnbench.policy import (
    PromptStepMethod,
    fit_on_prompts,
    gflownet_family_defaults,
    gold_trajectory,
    lora_targets,
    lr_multiplier,
    sample_task,
    stepwise_schedule,
    trainable_parameters,
    trajectories_from_states,
)
from gfnbench.sampling import encode, policy_log_probs, positions_from_mask
from gfnbench.spending import reward_tally
from gfnbench.tasks.base import Example, Task
from gfnbench.trained import TrainedModule
from gfnbench.trajectories import Trajectories, right_pad


@dataclass(frozen=True)
class GFlowNetConfig:
    loss: str = "subtb"                  # "subtb" (paper) or "tb"
    lam: float = 1.0                     # SubTB sub-trajectory weight lambda^(length - 1)
    lr: float = 1e-4
    logz_lr: float = 0.1                 # the learned log Z (TB; SubTB root when the prompt cannot stop)
    warmup_steps: int = 20
    decay_to: float = 1.0                # lr multiplier reached at the last step, linearly after warm-up (1 = constant)
    total_steps: int = 0                 # optimizer steps of the run (set by the method; needed when decay_to < 1)
    samples_per_prompt: int = 8
    reward_temperature: tuple[float, float, int] = (1.0, 1.0, 0)
    behaviour_mix: tuple[float, float, float] = (0.25, 0.5, 0.25)   # on-policy, tempered, replay
    tempered_range: tuple[float, float] = (0.5, 2.0)
    buffer_capacity: int = 50
    buffer_sampling: str = "reward"
    dedup_tol: float = 0.25
    min_log_reward: float = -99.0
    huber_delta: float | None = 1.0      # None: squared residuals (the paper); see losses.balance_penalty
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None   # None: the architecture's defaults (models.py)
    init: str = "base"                   # "sft": start from the same seed's SFT adapter (warm_start.py)
    seed_buffer_with_gold: bool = True   # gold targets and the task's `buffer_seeds` start in the buffer

    def __post_init__(self):
        if self.loss not in ("subtb", "tb"):
            raise ValueError(f"GFlowNet loss must be 'subtb' or 'tb', got {self.loss!r}")
        if any(p < 0 for p in self.behaviour_mix) or not math.isclose(sum(self.behaviour_mix), 1.0):
            raise ValueError(f"behaviour_mix must be 3 non-negative probabilities summing to 1: {self.behaviour_mix}")
        ranges.positive(self, "lam", "lr", "logz_lr", "huber_delta")
        ranges.at_least(self, 0, "warmup_steps", "decay_to", "total_steps", "dedup_tol")
        ranges.at_least(self, 1, "samples_per_prompt", "buffer_capacity")
        ranges.temperature_ramp(self)
        ranges.ordered_positive_pair(self, "tempered_range")
        ranges.lora_shape(self)
        ranges.init_choice(self)
        if self.buffer_sampling not in ("uniform", "reward"):
            raise ValueError(f"buffer_sampling must be 'uniform' or 'reward', got {self.buffer_sampling!r}")


def invalid_pair_share(terms: Tensor, log_r: Tensor) -> Tensor:
    """Share of the SubTB loss carried by pairs whose end state has zero reward (-inf, floored in the loss)."""
    invalid_end = torch.isneginf(log_r)[:, None, :].expand_as(terms)
    return terms[invalid_end].sum() / terms.sum().clamp(min=1e-30)


class LogZHead(ScalarHead):
    """Prompt-conditioned log Z: a linear map of the frozen base model's last prompt hidden state, scaled to unit
    L1 norm first.

    Why the scaling: Adam moves every weight by about lr per step, so on raw features the output moves by
    lr * ||h||_1 per step. SmolLM2's final hidden state has ||h||_1 = 587, so at lr 1e-2 log Z jumped by ~6 a
    step (measured on rng: 0 -> -28.6 -> 6.6 -> 1.9 within 80 steps against the true log 101 = 4.6), and every
    wrong log Z turns the root pairs into a push up (or down) on whatever was sampled: a collapse. On unit-L1
    features the output moves by at most ~2 lr per step, whatever the model's width or hidden scale."""

    def forward(self, features: Tensor) -> Tensor:
        features = features.float()
        return super().forward(features / features.abs().sum(-1, keepdim=True).clamp(min=1e-6))


class GFlowNetModule(TrainedModule):
    def __init__(self, task: Task, lm: LanguageModel, cfg: GFlowNetConfig, train_examples: list[Example],
                 seed: int = 0):
        super().__init__(task, lm, cfg, train_examples, seed)
        self.policy = add_lora(lm.model, rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                               targets=lora_targets(cfg.lora_targets))
        # TB needs log Z; SubTB needs it at the root when the prompt itself cannot stop (min_len > 0).
        self.log_z = LogZHead(lm.model.config.hidden_size) if cfg.loss == "tb" or task.min_len > 0 else None
        self.buffer = ReplayBuffer(cfg.buffer_capacity, cfg.dedup_tol, cfg.buffer_sampling)
        self.rng = random.Random(seed)
        self.train_loss, self.train_log_reward = MeanMetric(), MeanMetric()
        self.diagnostics: dict = {}
        self.prompt_feature_cache: dict[tuple, Tensor] = {}    # log Z features of each prompt (frozen base model)
        self.buffer_seeded = False
        self.seeded_examples: list[Example] = []     # training examples whose gold-derived texts were seeded

    # ------------------------------------------------------------------ rewards and behaviour policy
    def log_reward(self, traj: Trajectories, examples: list[Example]) -> Tensor:
        """The task's reward of every row (one counted reward call each: fresh draws and buffer seeds; replayed
        batches reuse stored rewards and call nothing)."""
        with torch.no_grad(), adapters_off(self.policy) as base:
            log_r = self.task.log_reward(base, self.tokenizer, traj, examples)
        reward_tally(self.policy).add(traj, examples)
        check_log_reward(log_r, f"task {self.task.name}, step {self.global_step}")
        return log_r

    def seed_buffer(self) -> int:
        """Gold trajectories (e.g. the labelled rationales) and the task's other seeds (subj's "wishful"
        rationales, written from the gold label) go into the buffer with their rewards; each example seeded is a
        labelled example the row read (`seeded_examples`)."""
        added = 0
        for ex in self.examples:
            texts = [t for t in [self.task.target(ex)] if t is not None]
            with torch.no_grad(), adapters_off(self.policy) as base:
                texts += self.task.buffer_seeds(base, self.tokenizer, ex, self.generator)
            if not texts:
                continue
            prompt = self.task.prompt(ex)
            rows = [(*gold_trajectory(self.task, self.tokenizer, text), True) for text in texts]
            traj = trajectories_from_states(prompt, encode(self.tokenizer, [prompt])[0], rows, self.tokenizer,
                                            model_device(self.policy))
            traj = traj.with_log_reward(self.log_reward(traj, [ex]))
            added += self._remember(prompt, traj)
            self.seeded_examples.append(ex)
        return added

    def _remember(self, key: str, traj: Trajectories) -> int:
        stored = 0
        for b in range(len(traj)):
            n = int(traj.lengths[b])
            state_len = int(traj.state_mask[b].sum())
            tokens = traj.state_ids[b, :state_len].tolist()
            acts = traj.is_action[b, :state_len].tolist()
            log_r = traj.log_reward[b, : n + 1].tolist()
            final = log_r[-1] if math.isfinite(log_r[-1]) else self.cfg.min_log_reward
            item = BufferItem(tuple(tokens), final, (tokens, acts, bool(traj.stopped[b]), log_r))
            stored += bool(self.buffer.add(key, item))
        return stored

    def behaviour(self) -> str:
        on, tempered, _ = self.cfg.behaviour_mix
        u = self.rng.random()
        return "on_policy" if u < on else "tempered" if u < on + tempered else "replay"

    def draw(self, ex: Example) -> tuple[Trajectories, str]:
        prompt = self.task.prompt(ex)
        mode = self.behaviour()
        if mode == "replay":
            items = self.buffer.sample(prompt, self.cfg.samples_per_prompt, self.generator)
            if items:
                traj = trajectories_from_states(prompt, encode(self.tokenizer, [prompt])[0],
                                                [(t, a, s) for t, a, s, _ in (i.payload for i in items)],
                                                self.tokenizer, model_device(self.policy))
                return traj.with_log_reward(right_pad([i.payload[3] for i in items], 0.0, torch.float32,
                                                      traj.device)), mode
            mode = "tempered"   # nothing stored for this prompt yet (the paper's fallback)
        temperature = 1.0 if mode == "on_policy" else self.rng.uniform(*self.cfg.tempered_range)
        cfg = self.task.sampling(train=True, temperature=temperature)
        self.policy.eval()
        with torch.no_grad():
            traj = sample_task(self.task, self.policy, self.tokenizer, [prompt], self.cfg.samples_per_prompt, cfg,
                               context=self.context, generator=self.generator)
        traj = traj.with_log_reward(self.log_reward(traj, [ex]))
        self._remember(prompt, traj)
        return traj, mode

    # ------------------------------------------------------------------------------ Lightning
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.global_rank != 0:       # each process its own behaviour choices too
            self.rng = random.Random(rank_seed(self.seed, self.global_rank))

    def on_train_start(self) -> None:
        if self.cfg.seed_buffer_with_gold and not self.buffer_seeded:     # (a resumed run has its buffer)
            self.seed_buffer()
        self.buffer_seeded = True

    def reward_temperature(self) -> float:
        return reward_temperature(self.global_step, *self.cfg.reward_temperature)

    def prompt_features(self, traj: Trajectories) -> Tensor:
        with torch.no_grad(), adapters_off(self.policy) as base:
            out = base(input_ids=traj.prompt_ids[:1], attention_mask=traj.prompt_mask[:1],
                       position_ids=positions_from_mask(traj.prompt_mask[:1]), output_hidden_states=True)
        return out.hidden_states[-1][:, -1].float()

    def loss(self, traj: Trajectories) -> Tensor:
        temperature = self.reward_temperature()
        log_r = traj.log_reward / temperature
        self.policy.train()
        log_pf, log_pterm = policy_log_probs(self.policy, traj, self.allowed, self.stop_id)
        log_z = None
        if self.log_z is not None:
            # the features come from the frozen base model (adapters off): one pass per distinct prompt, ever
            key = tuple(traj.prompt_ids[0][traj.prompt_mask[0].bool()].tolist())
            if key not in self.prompt_feature_cache:
                self.prompt_feature_cache[key] = self.prompt_features(traj)
            log_z = self.log_z(self.prompt_feature_cache[key]).expand(len(traj))
            self.log("train/log_z", log_z.mean(), on_step=True)
        self.diagnostics = {"log_z": float(log_z.detach().mean()) if log_z is not None else None}
        if self.cfg.loss == "tb":
            return tb_loss(log_pf, log_pterm, log_r, traj.lengths, log_z, min_log_reward=self.cfg.min_log_reward,
                           huber_delta=self.cfg.huber_delta)
        terms, weight = subtb_terms(log_pf, log_pterm, log_r, traj.lengths, lam=self.cfg.lam,
                                    min_log_reward=self.cfg.min_log_reward, min_len=self.task.min_len,
                                    log_root_flow=log_z, huber_delta=self.cfg.huber_delta)
        self.diagnostics["invalid_pair_share"] = float(invalid_pair_share(terms.detach(), log_r))
        return terms.sum() / weight.sum()

    def training_step(self, batch, batch_idx):
        started = time.time()
        ex = self.examples[int(batch[0])]
        traj, mode = self.draw(ex)
        loss = self.loss(traj)
        final = terminal_log_reward(traj.log_reward, traj.lengths, self.cfg.min_log_reward)
        self.train_loss.update(loss.detach())
        self.train_log_reward.update(final.mean())
        self.log_dict({"train/loss": self.train_loss, "train/log_reward": self.train_log_reward},
                      on_step=True, prog_bar=True)
        self.log_dict({"train/reward_temperature": self.reward_temperature(), "train/buffer_size": len(self.buffer),
                       "train/step_time_s": time.time() - started}, on_step=True)
        self.curve.append({"step": int(self.global_step), "loss": float(loss.detach()),
                           "log_reward": float(final.mean()), "behaviour": mode, **self.diagnostics})
        return loss

    def configure_optimizers(self):
        groups = [{"params": trainable_parameters(self.policy), "lr": self.cfg.lr}]
        if self.log_z is not None:
            groups.append({"params": self.log_z.parameters(), "lr": self.cfg.logz_lr})
        opt = torch.optim.AdamW(groups)
        return stepwise_schedule(
            opt, lambda step: lr_multiplier(step, self.cfg.warmup_steps, self.cfg.total_steps, self.cfg.decay_to))

    def own_training_state(self) -> dict:
        """The buffer and the behaviour choices' RNG (TrainedModule saves the generator and the curve)."""
        return {"replay_buffer": self.buffer.state_dict(), "rng": self.rng.getstate(),
                "buffer_seeded": self.buffer_seeded, "seeded_ids": [ex.id for ex in self.seeded_examples]}

    def load_own_training_state(self, state: dict) -> None:
        self.buffer.load_state_dict(state["replay_buffer"])
        self.rng.setstate(state["rng"])
        self.buffer_seeded = state["buffer_seeded"]
        ids = set(state["seeded_ids"])
        self.seeded_examples = [ex for ex in self.examples if ex.id in ids]

    def config_dict(self) -> dict:
        return asdict(self.cfg)


# ------------------------------------------------------------------------------------ the benchmark method

def fit_module(module: GFlowNetModule, ctx, accumulate: int, steps: int, callbacks: list | None = None) -> None:
    """`steps` optimizer steps over seeded training prompts, one prompt per micro-batch (as the paper),
    checkpointed so that a killed run resumes exactly."""
    fit_on_prompts(module, ctx, steps * accumulate, 1, callbacks, checkpoints=True, max_steps=steps,
                   accumulate_grad_batches=accumulate)


class GFlowNetMethod(PromptStepMethod):
    """The GFlowNet row, registered by gflownet.py (one row per `loss`) and extended by gflownet_mstep."""

    loss = "subtb"
    settings_class = GFlowNetConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        self.cfg = self.build_settings(self.default_settings())
        self.module = GFlowNetModule(task, lm, self.cfg, task.examples("train"), seed=ctx.seed)

    def default_settings(self) -> dict:
        """The profile's budget and LoRA shape, the task's training defaults (docs/paper.md#the-method)."""
        t = self.task.training
        return {**gflownet_family_defaults(self.task, self.ctx.profile, self.steps), "loss": self.loss,
                "behaviour_mix": t.behaviour_mix, "buffer_capacity": t.buffer_capacity,
                "buffer_sampling": t.buffer_sampling, "dedup_tol": t.dedup_tol, "total_steps": self.steps}

    def labelled_examples(self) -> dict[str, list[Example]]:
        """Besides the labels its reward reads (label tasks), the examples whose gold targets or gold-derived
        seeds started in the replay buffer."""
        return {**super().labelled_examples(), "seeded": list(self.module.seeded_examples)}

    def config(self) -> dict:
        return {"gflownet": asdict(self.cfg), "train_steps": self.steps,
                "prompts_per_step": self.ctx.profile.prompts_per_step}
