"""Supervised fine-tuning of a label classifier: subj's "SFT on labels" row and the M-step of GFlowNet-EM.

A `LabelledClassification` task (a fixed label set, `classifier_prompt` and `prompted_classifier`: subj)
has no gold rationales to imitate, so its SFT row is the paper's classifier: a fresh LoRA on the base LM trained
with the softmax over the labels' log-likelihoods after a prompt, cross-entropy against the gold label
(reference-paper.md §4.4: lr 1e-3, 20 warm-up steps, linear decay, 100 steps; here the profile's step count).
A label's log-likelihood is the sum over its tokens, so multi-token labels compare fairly; labels that share
leading tokens (", so it is objective." / ", so it is subjective.") differ only where they differ.

The M-step (§4.3) is the same loss on prompts X + Z where Z are rationales sampled from the trained GFlowNet,
so that the classifier learns to read the rationales the E-step writes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import lightning as L
import torch
from torch import Tensor

from gfnbench.devices import rank, rank_seed
from gfnbench.methods import Budget, Method, make_trainer
from gfnbench.models import LanguageModel
from gfnbench.policy import (
    SUPERVISED_LR_MULTIPLIER,
    lora_policy,
    lr_multiplier,
    stepwise_schedule,
    trainable_parameters,
)
from gfnbench.sampling import continuation_log_probs, encode
from gfnbench.trajectories import Trajectories


@dataclass(frozen=True)
class LabelSFTConfig:
    lr: float = 1e-3
    warmup_steps: int = 20
    batch_size: int = 8                # (prompt, gold label) items per optimizer step
    max_grad_norm: float = 1.0
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None


def label_log_likelihoods(model, tokenizer, prompts: list[str], label_texts: list[str]) -> Tensor:
    """[B, L] log p(label text | prompt), summed over the label's tokens, in one batched pass."""
    ids, labels = encode(tokenizer, prompts), encode(tokenizer, label_texts)
    per_token = continuation_log_probs(model, [(p, lab) for p in ids for lab in labels])
    return torch.stack([lp.sum() for lp in per_token]).view(len(prompts), len(labels))


def label_loss(model, tokenizer, prompts: list[str], label_texts: list[str], gold: list[int]) -> Tensor:
    """Mean cross-entropy of the softmax over the labels' log-likelihoods (the paper's two-label loss)."""
    scores = label_log_likelihoods(model, tokenizer, prompts, label_texts)
    return torch.nn.functional.cross_entropy(scores, torch.tensor(gold, device=scores.device))


class LabelClassifierModule(L.LightningModule):
    """LoRA on the base LM trained on (prompt, gold label index) items with `label_loss`."""

    def __init__(self, lm: LanguageModel, cfg: LabelSFTConfig, items: list[tuple[str, int]],
                 label_texts: list[str], steps: int, seed: int = 0):
        super().__init__()
        if not items:
            raise ValueError("label SFT needs at least one labelled (prompt, label) item")
        self.tokenizer, self.cfg, self.steps = lm.tokenizer, cfg, steps
        self.items, self.label_texts = items, label_texts
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed)
        self.curve: list[dict] = []

    def training_step(self, batch, batch_idx):
        self.policy.train()
        prompts, gold = [self.items[int(i)][0] for i in batch], [self.items[int(i)][1] for i in batch]
        loss = label_loss(self.policy, self.tokenizer, prompts, self.label_texts, gold)
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(gold))
        self.curve.append({"step": int(self.global_step), "loss": float(loss.detach())})
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(trainable_parameters(self.policy), lr=self.cfg.lr)
        warmup, total = max(self.cfg.warmup_steps, 1), max(self.steps, 1)

        def schedule(step: int) -> float:      # linear warm-up, then linear decay to 0 at the last step
            return min(lr_multiplier(step, warmup, 0, 1.0), max(0.0, (total - step) / max(total - warmup, 1)))

        return stepwise_schedule(opt, schedule)


def fit_label_classifier(module: LabelClassifierModule, ctx) -> None:
    """`module.steps` optimizer steps over seeded shuffles of the items (batches wrap around the epoch)."""
    from torch.utils.data import DataLoader, RandomSampler

    n, batch = len(module.items), min(module.cfg.batch_size, len(module.items))
    sampler = RandomSampler(range(n), replacement=False, num_samples=math.ceil(module.steps * batch / n) * n,
                            generator=torch.Generator().manual_seed(rank_seed(ctx.seed, rank())))
    loader = DataLoader(list(range(n)), batch_size=batch, sampler=sampler, drop_last=True)
    trainer = make_trainer(ctx, model=module.policy, max_steps=module.steps, gradient_clip_val=module.cfg.max_grad_norm,
                          limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)


def label_defaults(profile, lr: float) -> dict:
    """The profile's LoRA shape and step count set the label classifier's defaults."""
    return dict(lr=lr, lora_rank=profile.lora_rank, lora_alpha=profile.lora_alpha,
                warmup_steps=min(20, max(1, profile.train_steps // 5)))


class LabelSFTMethod(Method):
    """SFT on labels: the fine-tuned LM is a direct classifier (zero-shot classifier prompt, argmax label)."""

    trains = True
    settings_class = LabelSFTConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        lr = ctx.profile.learning_rate * SUPERVISED_LR_MULTIPLIER
        self.cfg = self.build_settings(label_defaults(ctx.profile, lr))
        self.steps = max(1, ctx.profile.train_steps)
        labels = list(task.labels)
        items = [(task.classifier_prompt(ex, 0), labels.index(ex.answer)) for ex in task.examples("train")]
        self.module = LabelClassifierModule(lm, self.cfg, items, [f" {lab}" for lab in labels], self.steps,
                                            seed=ctx.seed)

    @property
    def policy(self):
        return self.module.policy

    def trained_module(self):
        return self.module

    def fit(self) -> dict:
        fit_label_classifier(self.module, self.ctx)
        return {"train_curve": self.module.curve}

    def sample(self, examples, n, generator) -> Trajectories:
        self.policy.eval()
        return self.task.prompted_classifier(replace(self.lm, model=self.policy), examples, 0)

    def score_with_model(self, model, tokenizer, texts, ex) -> dict:
        return {"accuracy": float(texts[0].strip() == ex.answer)}

    def budget(self) -> Budget:
        return Budget(0, self.steps, f"{self.steps} steps x {self.cfg.batch_size} labelled examples, no reward")

    @property
    def exact_temperature(self):
        return None

    def config(self) -> dict:
        return {"label_sft": asdict(self.cfg), "train_steps": self.steps, "train_items": len(self.module.items),
                "prompt": "the zero-shot classifier prompt; loss: softmax over the labels' log-likelihoods"}
