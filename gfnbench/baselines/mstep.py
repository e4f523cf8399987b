"""GFlowNet + M-step (paper §4.3, "+ Supervised fine-tuning"): one EM step for a latent-rationale classifier.

E-step: the GFlowNet row's training, unchanged (same seed, same budget). M-step: sample rationales Z for every
labelled training example from the trained GFlowNet at T = 1, then fine-tune a fresh LoRA on a clean copy of the
base LM with the label loss on X + Z (gfnbench/label_classifier.py): the classifier learns to read the rationales the
sampler writes. Test: rationales come from the E-step policy, the M-step model predicts the label after each,
and they vote, exactly as the GFlowNet row does with the base LM as predictor.

Budget: the E-step costs what the gflownet row costs; the M-step adds profile.train_steps label-loss steps on
`rationales_per_example` x n items (paper: 100 rationales per example, 100 steps, lr 1e-4).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from gfnbench import setting_ranges as ranges
from gfnbench.devices import run_device, seeded_generator
from gfnbench.gflownet_training import GFlowNetConfig, GFlowNetMethod
from gfnbench.label_classifier import LabelClassifierModule, LabelSFTConfig, fit_label_classifier, label_defaults
from gfnbench.methods import Budget, register_method
from gfnbench.text_finetune import plain_copy


@dataclass(frozen=True)
class GFlowNetMStepConfig(GFlowNetConfig):
    """The E-step's GFlowNet settings, plus the M-step's (`--gflownet_mstep.mstep.lr 1e-4`)."""

    rationales_per_example: int = 8      # the paper samples 100 per example; 8 x 10 examples fit the CPU budget
    mstep: LabelSFTConfig = field(default_factory=LabelSFTConfig)

    def __post_init__(self):
        super().__post_init__()
        ranges.at_least(self, 1, "rationales_per_example")


@register_method("gflownet_mstep", "GFlowNet rationales (E-step) read by a classifier fine-tuned on them (M-step)",
                 opt_in=True)
class GFlowNetMStep(GFlowNetMethod):
    """The gflownet row's training (SubTB) as the E-step."""

    settings_class = GFlowNetMStepConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        self.rationales_per_example = self.cfg.rationales_per_example
        self.mstep_cfg = self.cfg.mstep
        self.classifier = None

    def default_settings(self) -> dict:
        prof = self.ctx.profile
        return {**super().default_settings(),
                "mstep": LabelSFTConfig(**label_defaults(prof, prof.learning_rate))}

    def fit(self) -> dict:
        extra = super().fit()
        device = run_device(self.ctx.profile)
        self.policy.to(device)           # Lightning hands the E-step's module back on the CPU
        train = self.task.examples("train")
        generator = seeded_generator(self.ctx.seed + 1, device)
        with torch.no_grad():
            traj = self.sample(train, self.rationales_per_example, generator)
        items = [(self.task.prompt(train[g]) + text, list(self.task.labels).index(train[g].answer))
                 for g, text in zip(traj.group.tolist(), traj.texts)]
        labels = [self.task.label_suffix(label) for label in self.task.labels]
        clean_lm = replace(self.lm, model=plain_copy(self.policy))     # base weights, E-step adapters dropped
        module = LabelClassifierModule(clean_lm, self.mstep_cfg, items, labels,
                                       max(1, self.ctx.profile.train_steps), seed=self.ctx.seed)
        fit_label_classifier(module, replace(self.ctx, log_dir=self.ctx.log_dir and self.ctx.log_dir / "mstep"))
        self.classifier = module.policy.eval()
        return {**extra, "mstep_curve": module.curve}

    def evaluation_modules(self) -> list:
        return [self.policy, self.classifier]

    def score_with_model(self, model, tokenizer, texts, ex) -> dict:
        """The task's scores with the M-step model as the predictor (the base LM's are the gflownet row's)."""
        return self.task.score_with_model(self.classifier, tokenizer, texts, ex)

    def labelled_examples(self) -> dict:
        """The E-step's, and the M-step's labels: its items pair rationales with the gold label of every
        training example (all of them are in the classifier's training set)."""
        return {**super().labelled_examples(), "train_gold": list(self.task.examples("train"))}

    def budget(self) -> Budget:
        e_step = super().budget()
        return replace(e_step, optimizer_steps=e_step.optimizer_steps + self.ctx.profile.train_steps,
                       summary=f"{e_step.summary}, then an M-step of {self.ctx.profile.train_steps} steps on "
                               f"{self.rationales_per_example} rationales per labelled example")

    def config(self) -> dict:
        return {**super().config(), "mstep": asdict(self.mstep_cfg), "mstep_steps": self.ctx.profile.train_steps,
                "rationales_per_example": self.rationales_per_example}
