"""GFlowNet + M-step (paper §4.3, "+ Supervised fine-tuning"): one EM step for a latent-rationale classifier.

E-step: the GFlowNet row's training, unchanged (same seed, same budget). M-step: sample rationales Z for every
labelled training example from the trained GFlowNet at T = 1, then fine-tune a fresh LoRA on a clean copy of the
base LM with the label loss on X + Z (baselines/label_sft.py): the classifier learns to read the rationales the
sampler writes. Test: rationales come from the E-step policy, the M-step model predicts the label after each,
and they vote, exactly as the GFlowNet row does with the base LM as predictor.

Budget: the E-step costs what the gflownet row costs; the M-step adds profile.train_steps label-loss steps on
`rationales_per_example` x n items (paper: 100 rationales per example, 100 steps, lr 1e-4).
"""
from __future__ import annotations

from dataclasses import asdict, replace

import torch

from gfnbench.baselines.label_sft import LabelClassifierModule, fit_label_classifier, label_config
from gfnbench.gflownet import GFlowNetSubTB
from gfnbench.methods import register_method
from gfnbench.text_finetune import plain_copy

RATIONALES_PER_EXAMPLE = 8      # the paper samples 100 per example; 8 x 10 examples fit the CPU budget


@register_method("gflownet_mstep", "GFlowNet rationales (E-step) read by a classifier fine-tuned on them (M-step)",
                 trains=True, opt_in=True)
class GFlowNetMStep(GFlowNetSubTB):
    def __init__(self, task, lm, ctx):
        hparams = dict(ctx.hparams)
        self.rationales_per_example = int(hparams.pop("rationales_per_example", RATIONALES_PER_EXAMPLE))
        super().__init__(task, lm, replace(ctx, hparams=hparams))
        self.mstep_cfg = label_config(replace(ctx, hparams={}), ctx.profile.learning_rate)
        self.classifier = None

    def fit(self) -> dict:
        extra = super().fit()
        train = self.task.examples("train")
        generator = torch.Generator().manual_seed(self.ctx.seed + 1)
        with torch.no_grad():
            traj = self.sample(train, self.rationales_per_example, generator)
        items = [(self.task.prompt(train[g]) + text, list(self.task.labels).index(train[g].answer))
                 for g, text in zip(traj.group.tolist(), traj.texts)]
        labels = [self.task.answer_suffix(label) for label in self.task.labels]
        clean_lm = replace(self.lm, model=plain_copy(self.policy))     # base weights, E-step adapters dropped
        module = LabelClassifierModule(clean_lm, self.mstep_cfg, items, labels,
                                       max(1, self.ctx.profile.train_steps), seed=self.ctx.seed)
        fit_label_classifier(module, replace(self.ctx, log_dir=self.ctx.log_dir and self.ctx.log_dir / "mstep"))
        self.classifier = module.policy.eval()
        return {**extra, "mstep_curve": module.curve}

    def score_with_model(self, model, tokenizer, texts, ex) -> dict:
        """The task's scores with the M-step model as the predictor (the base LM's are the gflownet row's)."""
        return self.task.score_with_model(self.classifier, tokenizer, texts, ex)

    def config(self) -> dict:
        return {**super().config(), "mstep": asdict(self.mstep_cfg), "mstep_steps": self.ctx.profile.train_steps,
                "rationales_per_example": self.rationales_per_example}
