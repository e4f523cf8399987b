"""Supervised fine-tuning of a label classifier, shared by subj's "SFT on labels" row (baselines/sft.py) and the
M-step of GFlowNet-EM (baselines/mstep.py).

A `LabelledClassification` task (a fixed label set, `classifier_prompt` and `prompted_classifier`: subj)
has no gold rationales to imitate, so its SFT row is the paper's classifier: a fresh LoRA on the base LM trained
with the softmax over the labels' log-likelihoods after a prompt, cross-entropy against the gold label
(docs/paper.md#subjectivity-baselines: lr 1e-3, 20 warm-up steps, linear decay, 100 steps; here the profile's steps).
A label's log-likelihood is the sum over its tokens, so multi-token labels compare fairly; labels that share
leading tokens (", so it is objective." / ", so it is subjective.") differ only where they differ.

The M-step (§4.3) is the same loss on prompts X + Z where Z are rationales sampled from the trained GFlowNet,
so that the classifier learns to read the rationales the E-step writes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from gfnbench import setting_ranges as ranges
from gfnbench.devices import rank, rank_seed
from gfnbench.models import LanguageModel
from gfnbench.policy import lora_policy, lr_multiplier, stepwise_schedule, trainable_parameters
from gfnbench.sampling import continuation_log_probs, encode
from gfnbench.trainer import make_trainer


@dataclass(frozen=True)
class LabelSFTConfig:
    lr: float = 1e-3
    warmup_steps: int = 20
    batch_size: int = 8                # (prompt, gold label) items per optimizer step
    max_grad_norm: float = 1.0
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None

    def __post_init__(self):
        ranges.positive(self, "lr")
        ranges.at_least(self, 0, "warmup_steps", "max_grad_norm")
        ranges.at_least(self, 1, "batch_size")
        ranges.lora_shape(self)


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
    """LoRA on the base LM trained on (prompt, gold label index) items with `label_loss`. `weight_decay` is the
    sft row's (SFTConfig; 0.01, AdamW's default, when not set); the M-step keeps the default."""

    def __init__(self, lm: LanguageModel, cfg: LabelSFTConfig, items: list[tuple[str, int]],
                 label_texts: list[str], steps: int, seed: int = 0, weight_decay: float = 0.01):
        super().__init__()
        if not items:
            raise ValueError("label SFT needs at least one labelled (prompt, label) item")
        self.tokenizer, self.cfg, self.steps, self.weight_decay = lm.tokenizer, cfg, steps, weight_decay
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
        opt = torch.optim.AdamW(trainable_parameters(self.policy), lr=self.cfg.lr, weight_decay=self.weight_decay)
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
