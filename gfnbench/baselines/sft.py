"""Supervised fine-tuning (SFT): the paper's "SFT + tool use" row on gold continuations, and on a label task
(subj) its "SFT on labels" row, a direct classifier (gfnbench/label_classifier.py). One row, one settings class
(`SFTConfig`), so every setting the pre-flight check accepts is one the row uses.

The policy is the base LM plus LoRA (the same rank and alpha as GFlowNet). It is trained to maximise the
likelihood of each labelled continuation (for arith, the rationale text with the calculator's outputs, then the
stop token) under the policy's own distribution: the log-softmax with the task's allowed-token mask, exactly the
distribution the sampler draws from. The target is tokenised the way the sampler would have produced it
(`policy.gold_trajectory`: action pieces and tool outputs tokenised separately), so training and sampling see
the same token sequences. Early stopping on the validation NLL keeps the best adapter weights in memory, with
no checkpoint on disk.

SFT only applies to tasks with gold targets: arith's labelled rationales; for `rng`/`rng_peaked`, whose target
is a distribution rather than a string, seeded draws from that distribution (gfnbench/tasks/rng.py), so SFT there is
maximum likelihood on a finite sample of the exact target.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from gfnbench import setting_ranges as ranges
from gfnbench.devices import rank, rank_seed
from gfnbench.label_classifier import LabelClassifierModule, LabelSFTConfig, fit_label_classifier, label_defaults
from gfnbench.methods import Budget, ExactSampler, Method, register_method
from gfnbench.models import LanguageModel
from gfnbench.policy import (
    SUPERVISED_LR_MULTIPLIER,
    gold_trajectory,
    lora_policy,
    lr_multiplier,
    sample_policy,
    stepwise_schedule,
    trainable_parameters,
    trainable_state,
)
from gfnbench.sampling import encode, masked_log_softmax, positions_from_mask
from gfnbench.spending import distinct_draws
from gfnbench.tasks.base import Example, LabelledClassification, Task
from gfnbench.trainer import make_trainer
from gfnbench.trajectories import Trajectories, left_pad, right_pad


@dataclass(frozen=True)
class SFTConfig:
    """The sft row's settings. On a label task the classifier uses lr, weight_decay, warmup_steps, batch_size,
    max_grad_norm and the LoRA shape; the validation fields (val_every, patience, val_batch_size) and
    loss_on_tool_tokens concern gold targets only."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    batch_size: int = 8                # gold sequences (labelled examples) per optimizer step
    max_grad_norm: float = 1.0
    val_every: int = 5                 # optimizer steps between validation passes
    patience: int = 4                  # validation passes without improvement before stopping
    val_batch_size: int = 32
    loss_on_tool_tokens: bool = True   # imitate the full rationale text, tool outputs included
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] | str | None = None   # None: the architecture's defaults (models.py)

    def __post_init__(self):
        ranges.positive(self, "lr")
        ranges.at_least(self, 0, "weight_decay", "warmup_steps", "max_grad_norm")
        ranges.at_least(self, 1, "batch_size", "val_every", "patience", "val_batch_size")
        ranges.lora_shape(self)


@dataclass(frozen=True)
class GoldSequence:
    """One training/validation example: prompt tokens, target tokens (ending with stop) and loss weights."""

    prompt_ids: list[int]
    target_ids: list[int]
    weights: list[float] = field(compare=False)


def gold_sequences(task: Task, tokenizer, examples: list[Example], loss_on_tool_tokens: bool = True
                   ) -> list[GoldSequence]:
    """Encode every example that has a gold target; the stop token closes each target (it is an action)."""
    stop = task.stop_id(tokenizer)
    allowed = task.allowed_tokens(tokenizer)
    out = []
    for ex in examples:
        target = task.target(ex)
        if target is None:
            continue
        tokens, is_action = gold_trajectory(task, tokenizer, target)
        tokens, is_action = tokens + [stop], is_action + [True]
        weights = [1.0 if act or loss_on_tool_tokens else 0.0 for act in is_action]
        if allowed is not None:
            bad = [t for t, w in zip(tokens, weights) if w > 0 and not bool(allowed[t])]
            if bad:
                raise ValueError(f"task {task.name}: gold target {target!r} of example {ex.id!r} uses tokens the "
                                 f"task's mask forbids ({tokenizer.convert_ids_to_tokens(bad)}); the policy "
                                 f"could never write it")
        out.append(GoldSequence(encode(tokenizer, [task.prompt(ex)])[0], tokens, weights))
    return out


def collate(items: list[GoldSequence], pad_id: int) -> dict[str, Tensor]:
    """Left-padded prompts, right-padded targets (the layout of `Trajectories`, so positions line up)."""
    prompt_ids, prompt_mask = left_pad([i.prompt_ids for i in items], pad_id)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "target_ids": right_pad([i.target_ids for i in items], pad_id),
            "target_mask": right_pad([[1] * len(i.target_ids) for i in items], 0),
            "weights": right_pad([i.weights for i in items], 0.0, torch.float32)}


def token_nll(model, batch: dict[str, Tensor], allowed: Tensor | None, stop_id: int) -> tuple[Tensor, Tensor]:
    """([B, S] -log q(target token | prompt, earlier target tokens), 0 where unweighted; [B, S] weights)."""
    ids, weights = batch["target_ids"], batch["weights"]
    S = ids.shape[1]
    input_ids = torch.cat([batch["prompt_ids"], ids], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["target_mask"]], dim=1)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                   logits_to_keep=S + 1).logits[:, -(S + 1):-1]
    logp = masked_log_softmax(logits, allowed)
    safe = torch.where(weights > 0, ids, torch.full_like(ids, stop_id))   # padding may be a masked token
    nll = -logp.gather(-1, safe[:, :, None]).squeeze(-1)
    return torch.where(weights > 0, nll, torch.zeros_like(nll)), weights


class SFTModule(L.LightningModule):
    def __init__(self, task: Task, lm: LanguageModel, cfg: SFTConfig, train_items: list[GoldSequence],
                 val_items: list[GoldSequence], seed: int = 0):
        super().__init__()
        if not train_items:
            raise ValueError(f"task {task.name} has no training example with a gold target: SFT has nothing to "
                             f"imitate")
        self.task, self.tokenizer, self.cfg = task, lm.tokenizer, cfg
        self.train_items, self.val_items = train_items, val_items
        self.policy = lora_policy(lm, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, seed)
        self.allowed = task.allowed_tokens(lm.tokenizer)
        self.stop_id = task.stop_id(lm.tokenizer)
        self.train_loss, self.val_nll = MeanMetric(), MeanMetric()
        self.curve: list[dict] = []
        self.val_curve: list[dict] = []
        self.best_nll, self.best_step, self.best_state = math.inf, None, None

    def loader(self, items: list[GoldSequence], batch_size: int, shuffle: bool, seed: int = 0):
        from torch.utils.data import DataLoader

        return DataLoader(items, batch_size=min(batch_size, len(items)), shuffle=shuffle,
                          generator=torch.Generator().manual_seed(seed) if shuffle else None,
                          collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id))

    def training_step(self, batch, batch_idx):
        self.policy.train()
        nll, weights = token_nll(self.policy, batch, self.allowed, self.stop_id)
        loss = (nll * weights).sum() / weights.sum()
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=True, prog_bar=True, batch_size=len(weights))
        self.curve.append({"step": int(self.global_step), "loss": float(loss.detach())})
        return loss

    def validation_step(self, batch, batch_idx):
        nll, weights = token_nll(self.policy, batch, self.allowed, self.stop_id)
        self.val_nll.update(nll[weights > 0])

    def on_validation_epoch_end(self) -> None:
        value = float(self.val_nll.compute())
        self.val_nll.reset()
        self.log("val/nll", value, prog_bar=True)
        step = int(self.global_step)
        self.val_curve.append({"step": step, "val_nll": value})
        if value < self.best_nll:
            self.best_nll, self.best_step, self.best_state = value, step, trainable_state(self.policy)

    def restore_best(self) -> None:
        """Back to the adapter weights with the lowest val NLL (the base model if training never helped)."""
        if self.best_state is None:
            return
        with torch.no_grad():
            for name, p in self.policy.named_parameters():
                if name in self.best_state:
                    p.copy_(self.best_state[name])

    def on_train_end(self) -> None:
        self.restore_best()

    def configure_optimizers(self):
        opt = torch.optim.AdamW(trainable_parameters(self.policy), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        return stepwise_schedule(opt, lambda step: lr_multiplier(step, self.cfg.warmup_steps, 0, 1.0))


def fit_sft(module: SFTModule, ctx, steps: int) -> None:
    """`steps` optimizer steps over shuffled gold sequences, validating every `val_every` steps (and at step 0)."""
    from lightning.pytorch.callbacks import EarlyStopping

    cfg = module.cfg
    # each process its own shuffle (rank 0: the run's seed); every process validates on all of val, so early
    # stopping decides the same everywhere
    train = module.loader(module.train_items, cfg.batch_size, shuffle=True, seed=rank_seed(ctx.seed, rank()))
    val = module.loader(module.val_items, cfg.val_batch_size, shuffle=False) if module.val_items else None
    trainer = make_trainer(ctx, model=module.policy, max_steps=steps, max_epochs=-1,
                          val_check_interval=max(1, min(cfg.val_every, steps)), check_val_every_n_epoch=None,
                          limit_val_batches=1.0 if val is not None else 0,
                          callbacks=[EarlyStopping("val/nll", patience=cfg.patience, mode="min")] if val else [],
                          gradient_clip_val=cfg.max_grad_norm,
                          inference_mode=False)   # metric states made under inference mode break the next update
    if val is not None:
        trainer.validate(module, dataloaders=val, verbose=False)   # step 0: the base model is a candidate too
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)


@register_method("sft", "supervised fine-tuning (LoRA) on the task's gold targets (arith: rationales incl. tool "
                 "outputs; rng: draws from the target; infill: gold middles; early-stopped on val NLL) or, for "
                 "label tasks (subj), on the labels as a direct classifier", opt_in=True)
class SFTMethod(Method):
    """The sft row. Building it gives `LabelSFTMethod` on a label task (subj) and `GoldSFTMethod` on the others;
    both take `SFTConfig`, the class the registry checks settings against."""

    trains = True
    settings_class = SFTConfig

    def __new__(cls, task=None, *args, **kwargs):
        if cls is SFTMethod:
            cls = LabelSFTMethod if isinstance(task, LabelledClassification) else GoldSFTMethod
        return super().__new__(cls)

    @property
    def policy(self):
        return self.module.policy

    def trained_module(self):
        return self.module


class GoldSFTMethod(SFTMethod):
    """Imitates the task's gold targets (train split); tasks without any are refused (see the module doc)."""

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        prof = ctx.profile
        self.steps = max(1, prof.train_steps)
        self.cfg = self.build_settings(dict(lr=prof.learning_rate * SUPERVISED_LR_MULTIPLIER, lora_rank=prof.lora_rank,
                                            lora_alpha=prof.lora_alpha, warmup_steps=min(10, max(1, self.steps // 5))))
        tok = lm.tokenizer
        train = gold_sequences(task, tok, task.examples("train"), self.cfg.loss_on_tool_tokens)
        val = gold_sequences(task, tok, task.examples(task.val_split), self.cfg.loss_on_tool_tokens)
        self.module = SFTModule(task, lm, self.cfg, train, val, seed=ctx.seed)
        self.train_gold = with_target(task, task.examples("train"))
        self.val_gold = with_target(task, task.examples(task.val_split))

    def fit(self) -> dict:
        fit_sft(self.module, self.ctx, self.steps)
        return {"train_curve": self.module.curve, "val_curve": self.module.val_curve}

    def sample(self, examples, n, generator) -> Trajectories:
        return sample_policy(self.task, self.policy, self.lm, examples, n, generator)

    def exact_sampler(self) -> ExactSampler:
        """`sample` draws ancestrally from the fine-tuned policy at the task's evaluation temperature."""
        return ExactSampler(self.policy, self.task.eval_temperature)

    def labelled_examples(self) -> dict[str, list[Example]]:
        """The gold targets the shuffled loader handed out (every epoch is a permutation of them, so which ones
        were drawn does not matter to the count; train and val are disjoint), and every val gold target: each
        validation pass, step 0's included, reads all of them to early-stop and keep the best weights."""
        seen = distinct_draws(len(self.train_gold), len(self.module.curve), self.cfg.batch_size)
        return {"train_gold": self.train_gold[:seen], "val_gold": self.val_gold if self.module.val_items else []}

    def budget(self) -> Budget:
        steps = len(self.module.curve) or self.steps
        return Budget(0, steps, f"<= {self.steps} steps x {self.cfg.batch_size} gold targets, no reward, "
                                f"early-stopped on val NLL")

    def config(self) -> dict:
        return {"sft": asdict(self.cfg), "max_train_steps": self.steps, "lr_multiplier": SUPERVISED_LR_MULTIPLIER,
                "train_sequences": len(self.module.train_items), "val_sequences": len(self.module.val_items),
                "steps_run": len(self.module.curve), "best_val_step": self.module.best_step,
                "best_val_nll": None if self.module.best_state is None else self.module.best_nll}


def with_target(task: Task, examples: list[Example]) -> list[Example]:
    """The examples that have a gold target (those `gold_sequences` encodes)."""
    return [ex for ex in examples if task.target(ex) is not None]


def label_settings(cfg: SFTConfig) -> LabelSFTConfig:
    """The label classifier's settings out of the row's: the fields the two classes share, by name."""
    return LabelSFTConfig(**{f.name: getattr(cfg, f.name) for f in fields(LabelSFTConfig)})


class LabelSFTMethod(SFTMethod):
    """SFT on labels: the fine-tuned LM is a direct classifier (zero-shot classifier prompt, argmax label)."""

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        lr = ctx.profile.learning_rate * SUPERVISED_LR_MULTIPLIER
        settings = self.build_settings(label_defaults(ctx.profile, lr))
        self.cfg = label_settings(settings)
        self.steps = max(1, ctx.profile.train_steps)
        labels = list(task.labels)
        items = [(task.classifier_prompt(ex, 0), labels.index(ex.answer)) for ex in task.examples("train")]
        self.module = LabelClassifierModule(lm, self.cfg, items, [f" {lab}" for lab in labels], self.steps,
                                            seed=ctx.seed, weight_decay=settings.weight_decay)
        self.train_labelled = list(task.examples("train"))

    def fit(self) -> dict:
        fit_label_classifier(self.module, self.ctx)
        return {"train_curve": self.module.curve}

    exact_na_reason = "a direct classifier: its one sample is the label the fine-tuned model prefers, not a draw"

    def sample(self, examples, n, generator) -> Trajectories:
        self.policy.eval()
        return self.task.prompted_classifier(replace(self.lm, model=self.policy), examples, 0)

    def exact_sampler(self) -> None:
        return None

    def labelled_examples(self) -> dict[str, list[Example]]:
        """The labelled sentences the classifier's loader handed out (a permutation per epoch, as for gold SFT)."""
        seen = distinct_draws(len(self.train_labelled), len(self.module.curve), self.cfg.batch_size)
        return {"train_gold": self.train_labelled[:seen]}

    def score_with_model(self, model, tokenizer, texts, ex) -> dict:
        return {"accuracy": float(texts[0].strip() == ex.answer)}

    def budget(self) -> Budget:
        return Budget(0, self.steps, f"{self.steps} steps x {self.cfg.batch_size} labelled examples, no reward")

    def config(self) -> dict:
        return {"label_sft": asdict(self.cfg), "train_steps": self.steps, "train_items": len(self.module.items),
                "prompt": "the zero-shot classifier prompt; loss: softmax over the labels' log-likelihoods"}
