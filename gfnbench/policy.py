"""What trained methods share: a seeded LoRA policy, sampling a task, gold trajectories, schedules, prompt loaders,
the GFlowNet row's defaults, and `PolicyMethod`, the base of every row that fine-tunes a policy (its modules'
base, `TrainedModule`, is in trained.py).

Every method file imports from here rather than from another method's file, so a new method needs nothing but
this module, `methods.py` and the core passes in `sampling/`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gfnbench.devices import rank, rank_seed
from gfnbench.methods import Budget, ExactSampler, Method
from gfnbench.models import LanguageModel, add_lora
from gfnbench.sampling import SamplingConfig, sample
from gfnbench.spending import reward_tally
from gfnbench.tasks.base import Example, LabelledClassification, Task
from gfnbench.trainer import make_trainer
from gfnbench.trajectories import Trajectories, from_rows
from gfnbench.warm_start import warm_spending

# Supervised rows (SFT on targets, SFT on labels) train at 10x the profile's GFlowNet learning rate (1e-3 on cpu,
# a usual LoRA SFT rate). On the embedded model with the 10 arith rationales, val NLL went 1.15 -> 0.83 in 20
# steps at 1e-4, and 1.15 -> 0.37 (its best, step 10) at 1e-3; early stopping on val NLL guards over-fitting.
SUPERVISED_LR_MULTIPLIER = 10.0


def lora_policy(lm: LanguageModel, rank: int, alpha: int, targets, seed: int):
    """LoRA with a seed-determined init (its A matrices are random) that leaves the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return add_lora(lm.model, rank=rank, alpha=alpha, targets=lora_targets(targets))


def lora_targets(targets):
    """Settings hold module names as a tuple (hashable, frozen dataclasses); peft wants a list or a pattern."""
    return list(targets) if isinstance(targets, tuple) else targets


def trainable_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """A copy of the trainable (adapter) weights: kilobytes to megabytes, so the best one stays in memory."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def sample_task(task: Task, model, tokenizer, prompts: list[str], n: int, cfg: SamplingConfig, *,
                context: int | None, generator: torch.Generator | None) -> Trajectories:
    """Sample n continuations of each prompt with the task's stop token, token mask and tool: the one call every
    method makes, so no method can forget the mask or the calculator."""
    return sample(model, tokenizer, prompts, n, cfg, stop_id=task.stop_id(tokenizer),
                  allowed=task.allowed_tokens(tokenizer), tool=task.tool if task.has_tool else None,
                  context=context, generator=generator)


@torch.no_grad()
def sample_scored(task: Task, policy, tokenizer, examples: list[Example], n: int, *, context: int | None,
                  generator: torch.Generator | None, what: str) -> Trajectories:
    """n on-policy training samples of each example's prompt, with their per-prefix log rewards under the base
    model (adapters off), checked for NaN/+inf (`what` names the step in the error). Every row is one reward
    call, counted against `policy` (spending.reward_tally; TrainedModule keeps the count in its checkpoints)."""
    from gfnbench.losses import check_log_reward
    from gfnbench.models import adapters_off

    policy.eval()
    traj = sample_task(task, policy, tokenizer, [task.prompt(ex) for ex in examples], n, task.sampling(train=True),
                       context=context, generator=generator)
    with adapters_off(policy) as base:
        traj = traj.with_log_reward(task.log_reward(base, tokenizer, traj, examples))
    reward_tally(policy).add(traj, examples)
    check_log_reward(traj.log_reward, f"task {task.name}, {what}", traj.lengths)
    return traj


def sample_policy(task: Task, policy, lm: LanguageModel, examples: list[Example], n: int,
                  generator: torch.Generator) -> Trajectories:
    """Evaluation sampling of a fine-tuned policy: the task's prompt and evaluation decoding."""
    policy.eval()
    return sample_task(task, policy, lm.tokenizer, [task.prompt(ex) for ex in examples], n,
                       task.sampling(train=False), context=lm.context_length, generator=generator)


def gold_trajectory(task: Task, tokenizer, target: str) -> tuple[list[int], list[bool]]:
    """Split a gold continuation into policy actions and tool outputs, as the sampler would have produced it.

    Walks the target text; wherever the task's tool fires on the text so far and the target continues with
    exactly the tool's output, that output becomes non-action state tokens.
    """
    tokens, is_action, written, start = [], [], "", 0
    for end in range(1, len(target) + 1):
        inserted = task.tool(written + target[start:end]) if task.has_tool else None
        if inserted and target.startswith(inserted, end):
            piece = tokenizer(target[start:end], add_special_tokens=False)["input_ids"]
            tool_ids = tokenizer(inserted, add_special_tokens=False)["input_ids"]
            tokens += piece + tool_ids
            is_action += [True] * len(piece) + [False] * len(tool_ids)
            written += target[start:end] + inserted
            start = end + len(inserted)
    if start < len(target):
        piece = tokenizer(target[start:], add_special_tokens=False)["input_ids"]
        tokens += piece
        is_action += [True] * len(piece)
    return tokens, is_action


def trajectories_from_states(prompt: str, prompt_ids: list[int], states: list[tuple[list[int], list[bool], bool]],
                             tokenizer, device: torch.device | str = "cpu") -> Trajectories:
    """Rebuild a batch from stored state sequences (replay, gold seeds) on `device` (the policy's); log-probs get
    recomputed anyway."""
    n_actions = [sum(a) for _, a, _ in states]
    return from_rows([prompt] * len(states), [0] * len(states), [prompt_ids] * len(states),
                     [s for s, _, _ in states], [a for _, a, _ in states], [st for _, _, st in states],
                     [[0.0] * n for n in n_actions], [[0.0] * (n + 1) for n in n_actions],
                     [tokenizer.decode(s, skip_special_tokens=True) for s, _, _ in states], tokenizer.pad_token_id,
                     device=device)


def lr_multiplier(step: int, warmup: int, total: int, decay_to: float) -> float:
    """Linear warm-up to 1, then (when decay_to < 1) linear decay to decay_to at the last step: a constant step
    leaves a noise floor (rng: exact TV hovering at 0.04-0.06 from step 160 to 240 at lr 1e-3)."""
    warmup = max(warmup, 1)
    if step < warmup:
        return (step + 1) / warmup
    if decay_to >= 1.0 or total <= warmup:
        return 1.0
    return 1.0 + (decay_to - 1.0) * min(1.0, (step - warmup) / max(total - 1 - warmup, 1))


def stepwise_schedule(optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float]) -> dict:
    """Lightning's optimizer config with a per-step LambdaLR."""
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainable_parameters(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def seeded_prompt_loader(n_examples: int, batch_size: int, batches: int, seed: int,
                         weights: list[float] | None = None):
    """`batches` batches of training-example indices drawn with replacement (uniformly, or by `weights`: the
    task's `prompt_weights`), the same for the same seed, and resumable (see checkpoints.PromptLoader)."""
    from gfnbench.checkpoints import PromptLoader

    return PromptLoader(n_examples, batch_size, batches, seed, weights)


def sequence_log_prob_of(model, traj: Trajectories, task: Task, allowed, stop_id: int) -> Tensor:
    """[B] log q(trajectory) under `model` with gradients, in the sampler's own distribution: its tokens, then
    the stop when it chose to stop (stop blocked before min_len, so those steps renormalise without it)."""
    from gfnbench.objectives import action_slots, sampler_action_log_probs, sequence_log_prob
    from gfnbench.sampling import policy_log_probs

    log_pf, log_pterm = policy_log_probs(model, traj, allowed, stop_id)
    logp = sampler_action_log_probs(log_pf, log_pterm, traj.lengths, traj.stopped, task.min_len)
    return sequence_log_prob(logp, action_slots(traj.lengths, traj.stopped, traj.max_actions + 1))


def train_steps(task: Task, profile) -> int:
    """Optimizer steps (or rollout batches) of a trained row: the profile's, scaled by the task."""
    return max(1, round(profile.train_steps * task.training.steps_multiplier))


def gflownet_family_defaults(task: Task, profile, steps: int) -> dict:
    """What the GFlowNet row takes from profile and task (lr, temperature ramp, LoRA shape, warm-up, batch), so
    the GFlowNet-family rows differ from it in objective only."""
    t = task.training
    start, end, horizon = t.reward_temperature
    ramp = (start, end, min(horizon, steps)) if t.anneal_within_budget else t.reward_temperature
    return dict(lr=t.learning_rate or profile.learning_rate, decay_to=t.decay_to, reward_temperature=ramp,
                samples_per_prompt=profile.samples_per_prompt, lora_rank=profile.lora_rank,
                lora_alpha=profile.lora_alpha, warmup_steps=min(20, max(1, profile.train_steps // 5)))


def fit_on_prompts(module, ctx, batches: int, batch_size: int, callbacks: list | None = None,
                   checkpoints: bool = False, **trainer_settings) -> None:
    """Lightning `fit` of `module` over `batches` seeded batches of training-prompt indices, drawn by the task's
    `prompt_weights`; `checkpoints` (modules that save their whole state) makes the run resumable. In a
    multi-process run each process draws its own prompts (its seed: devices.rank_seed; rank 0 keeps the run's)."""
    from gfnbench.checkpoints import resume_path

    weights = module.task.prompt_weights(module.examples)
    loader = seeded_prompt_loader(len(module.examples), batch_size, batches, rank_seed(ctx.seed, rank()), weights)
    trainer = make_trainer(ctx, checkpoints=checkpoints, model=module.policy, callbacks=list(callbacks or []),
                           **trainer_settings)
    trainer.fit(module, train_dataloaders=loader,
                ckpt_path=resume_path(ctx.checkpoint_dir, ctx.resume) if checkpoints else None)


class PolicyMethod(Method):
    """A row that fine-tunes `self.module.policy` (a `trained.TrainedModule`): it samples like every trained row
    and trains on seeded prompts, drawn by the task's `prompt_weights`, with the task's learning curve, for
    `self.steps` (the profile's steps scaled by the task's `steps_multiplier`). Its module saves its whole
    training state, so its runs resume exactly."""

    trains = True
    resumable = True

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        self.steps = train_steps(task, ctx.profile)

    @property
    def policy(self):
        return self.module.policy

    def trained_module(self):
        return self.module

    def sample(self, examples, n, generator) -> Trajectories:
        return sample_policy(self.task, self.policy, self.lm, examples, n, generator)

    def exact_sampler(self) -> ExactSampler:
        """`sample` above draws ancestrally from the fine-tuned policy at the task's evaluation temperature."""
        return ExactSampler(self.policy, self.task.eval_temperature)

    def reward_calls(self) -> int:
        return sum(state["calls"] for state in self.module.spent_by_process())

    def labelled_examples(self) -> dict[str, list[Example]]:
        """On a label task the reward reads the gold label of every training example it scores."""
        if not isinstance(self.task, LabelledClassification):
            return {}
        ids = {i for state in self.module.spent_by_process() for i in state["example_ids"]}
        return {"reward_labels": [ex for ex in self.module.examples if ex.id in ids]}

    def spending(self) -> Budget | None:
        """A row started from SFT (`init: sft`) also spent SFT's steps and labelled examples (warm_start.py)."""
        spent = super().spending()
        if self.ctx.warm_start is None:
            return spent
        return warm_spending(spent, self.labelled_examples(), self.ctx.warm_start, self.task)

    def train_on_prompts(self, batches: int, batch_size: int, reward_evals_per_batch: int, **settings) -> dict:
        """Fit over `batches` prompt batches; the record's train_curve and (when the task has a probe) its
        learning curve against reward evaluations."""
        from gfnbench.curves import learning_curve

        if self.ctx.warm_start is not None:      # step 0 is SFT's adapter (a resumed run's checkpoint then wins)
            self.ctx.warm_start.load_into(self.policy)
        curve = learning_curve(self.task, self.policy, self.lm.tokenizer, batches, reward_evals_per_batch,
                               self.ctx.profile.curve_points)
        settings.setdefault("checkpoints", True)
        fit_on_prompts(self.module, self.ctx, batches, batch_size, callbacks=[curve] if curve else [], **settings)
        return {"train_curve": self.module.curve, **({"learning_curve": curve.points} if curve else {})}


class PromptStepMethod(PolicyMethod):
    """Rows whose optimizer step is `prompts_per_step` prompts of `cfg.samples_per_prompt` fresh samples each,
    one prompt per micro-batch (GFlowNet, VarGrad TB, examples/reinforce.py): `self.steps` such steps."""

    def fit(self) -> dict:
        accumulate = self.ctx.profile.prompts_per_step
        return self.train_on_prompts(self.steps * accumulate, 1, self.cfg.samples_per_prompt, checkpoints=True,
                                     max_steps=self.steps, accumulate_grad_batches=accumulate)

    def budget(self) -> Budget:
        batches = self.steps * self.ctx.profile.prompts_per_step
        return Budget(batches * self.cfg.samples_per_prompt, self.steps, self.budget_summary())

    def budget_summary(self) -> str:
        return f"{self.steps} steps x {self.cfg.samples_per_prompt} samples"


class RolloutMethod(PolicyMethod):
    """Rows trained on rollout batches (GRPO, FlowRL): `iterations` batches of prompts_per_step x
    samples_per_prompt fresh samples, `epochs` updates on each; their settings carry those four fields."""

    iterations: int

    def fit(self) -> dict:
        per_batch = self.cfg.prompts_per_step * self.cfg.samples_per_prompt
        return self.train_on_prompts(self.iterations, self.cfg.prompts_per_step, per_batch, max_epochs=1,
                                     limit_val_batches=0)

    def budget(self) -> Budget:
        per_batch = self.cfg.prompts_per_step * self.cfg.samples_per_prompt
        return Budget(self.iterations * per_batch, self.iterations * self.cfg.epochs,
                      f"{self.iterations} iterations x {per_batch} samples, {self.cfg.epochs} epochs each")
