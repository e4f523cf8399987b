"""Warm start: a reward-trained row that starts from the same seed's SFT adapter (docs/methods.md#warm-start).

The setting is each row's `init` ("base", the default, or "sft"); the derived rows `sft_gflownet`, `sft_ppo`, ...
are those rows with `init: sft` fixed. What it takes lives here once: where the row applies, where its SFT run is
(the runner trains it there first when it is missing, so it is a run of its own that a table shows and the next
row reuses), what the row's policy loads at step 0, and what the row's budget adds for it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gfnbench.methods import METHODS, Budget, labelled_counts, register_variant
from gfnbench.records import RECORD, examples_fingerprint, run_dir
from gfnbench.tasks.base import TASKS, LabelledClassification

if TYPE_CHECKING:
    from gfnbench.plans import RunPlan
    from gfnbench.tasks.base import Example, Task

SFT = "sft"
ADAPTERS = "adapters.pt"
WARM_STARTABLE = ("gflownet", "ppo", "grpo", "flowrl", "tb_vargrad")   # each gets a derived row sft_<name>
SFT_USES = {"train_gold": "train", "val_gold": None}                  # SFT's labelled uses -> split (None: val)


def refusal(task: str) -> str | None:
    """Why no row can start from SFT on `task` (None: it can): SFT must apply, and be a policy for the task's own
    prompt. On a label task (subj) SFT is a direct classifier trained on another prompt (the classifier prompt)
    to write a label, not a rationale: loading it into a rationale policy would start from nothing SFT learnt."""
    task_cls = TASKS.get(task)
    if SFT not in METHODS or not METHODS[SFT].applies_to(task):
        return f"sft does not apply to task {task} (it has no gold targets to start from)"
    if task_cls is not None and issubclass(task_cls, LabelledClassification):
        return (f"on task {task} sft is a label classifier on the classifier prompt, not a policy for the task's "
                f"prompt, so there is no SFT policy to start from")
    return None


@dataclass(frozen=True)
class StartsFromSFT:
    """Where a derived row applies: where its base row applies and SFT can be started from (`refusal`)."""

    base: str

    def __call__(self, task: str) -> bool:
        return METHODS[self.base].applies_to(task) and refusal(task) is None

    def __str__(self) -> str:
        return f"tasks where {self.base} and gold-target sft apply"


def register_warm_started() -> None:
    """The derived rows: each warm-startable row with `init: sft` fixed, run only when named (not in `bench`'s
    default rows: each would add an SFT and a second training of its base row to a bench)."""
    for base in WARM_STARTABLE:
        if base in METHODS and f"sft_{base}" not in METHODS:
            register_variant(f"sft_{base}", base, f"{base} started from the same seed's SFT adapter (init: sft)",
                             {"init": SFT}, StartsFromSFT(base))


def check_init(task: str, method: str, settings: dict) -> None:
    """Preflight: a row set to start from SFT on a task where it cannot is one error, before anything loads."""
    if settings.get("init") == SFT and (why := refusal(task)):
        raise ValueError(f"{method} with init=sft: {why}")


def wants_sft(plan: RunPlan) -> bool:
    return plan.settings.get("init") == SFT


def sft_folder(plan: RunPlan) -> Path:
    """The same seed's SFT run, in the same results folder (so the same profile, model and precision)."""
    return run_dir(plan.root, plan.task.name, SFT, plan.seed)


def sft_run_state(folder: Path) -> str:
    """"done" (record and adapter: reuse it), "missing" (train it) or "no adapter" (a record without adapters.pt,
    from --save_adapters false: refused, since training it again would overwrite a finished run)."""
    if not (folder / RECORD).is_file():
        return "missing"
    return "done" if (folder / ADAPTERS).is_file() else "no adapter"


def no_adapter_error(folder: Path, plan: RunPlan) -> ValueError:
    return ValueError(f"{folder} holds an SFT record but no {ADAPTERS} (it ran with --save_adapters false), so "
                      f"{plan.method} cannot start from it: rerun it with gfnbench run --task {plan.task.name} "
                      f"--method sft --seed {plan.seed} --overwrite true")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class WarmStart:
    """A finished SFT run a row starts from: its folder, its record and where it came from."""

    folder: Path
    run: str                 # the folder relative to the results folder: runs/<task>/sft/seed<k>
    record: dict
    record_sha256: str
    trained_for_this_run: bool

    def load_into(self, policy: torch.nn.Module) -> None:
        """The policy's LoRA weights become SFT's (its first network in adapters.pt), after checking that both
        LoRAs have the same modules, rank and alpha."""
        saved = torch.load(self.folder / ADAPTERS, map_location="cpu", weights_only=True)[0]
        own = {name: p for name, p in policy.named_parameters() if p.requires_grad}
        mismatch = lora_mismatch(self.record, policy, saved, own)
        if mismatch:
            raise ValueError(f"cannot start from {self.run}: {mismatch}; a warm start needs the same lora_rank, "
                             f"lora_alpha and lora_targets as sft (both default to the profile's)")
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(saved[name])

    def labelled_examples(self, task: Task) -> dict[str, list[Example]]:
        """The labelled examples SFT read, rebuilt from its record's counts: gold SFT reads the first n
        examples with a target of each split (baselines/sft.py, GoldSFTMethod.labelled_examples)."""
        detail = self.record["budget"]["labelled_detail"]
        unknown = set(detail) - set(SFT_USES)
        if unknown:
            raise ValueError(f"{self.run}: unexpected labelled uses {sorted(unknown)} in its budget")
        return {use: [ex for ex in task.examples(split or task.val_split) if task.target(ex) is not None]
                [:detail.get(use, 0)] for use, split in SFT_USES.items()}

    def provenance(self) -> dict:
        """The record's `warm_start`: which SFT run, from which commit, and its record's and adapter's hashes."""
        return {"init": SFT, "run": self.run, "git_commit": self.record.get("git_commit"),
                "record_sha256": self.record_sha256, "adapters_sha256": self.record["adapters"]["sha256"],
                "trained_for_this_run": self.trained_for_this_run}


def lora_mismatch(record: dict, policy, saved: dict, own: dict) -> str | None:
    """How SFT's saved LoRA and the policy's differ (None: they match): modules and shapes, then alpha."""
    if set(saved) != set(own):
        extra, missing = sorted(set(saved) - set(own)), sorted(set(own) - set(saved))
        return f"its LoRA covers other modules (only in sft: {extra[:2]}, only here: {missing[:2]})"
    shapes = [n for n in own if tuple(own[n].shape) != tuple(saved[n].shape)]
    sft_cfg = record["config"]["method"].get(SFT, {})
    if shapes:
        return (f"its LoRA rank is {sft_cfg.get('lora_rank')}, this row's differs ({shapes[0]}: "
                f"{tuple(saved[shapes[0]].shape)} in sft, {tuple(own[shapes[0]].shape)} here)")
    alphas = {getattr(cfg, "lora_alpha", None) for cfg in getattr(policy, "peft_config", {}).values()}
    if sft_cfg.get("lora_alpha") not in alphas:
        return f"its LoRA alpha is {sft_cfg.get('lora_alpha')}, this row's is {sorted(alphas)[0]}"
    return None


def read_warm_start(folder: Path, plan: RunPlan, trained: bool) -> WarmStart:
    """The finished SFT run in `folder`, checked against the row's run: the same task data, profile and
    precision (the folder's place already keys them), and the adapter its record names."""
    raw = (folder / RECORD).read_bytes()
    record = json.loads(raw)
    run = folder.relative_to(plan.root).as_posix()
    if record.get("examples_sha256") != examples_fingerprint(plan.task):
        raise ValueError(f"{run} was trained on other {plan.task.name} data than this run reads: rerun it")
    if (record.get("profile"), record.get("precision")) != (plan.profile.name, plan.profile.precision):
        raise ValueError(f"{run} ran with profile {record.get('profile')} ({record.get('precision')}), this run "
                         f"with {plan.profile.name} ({plan.profile.precision})")
    if record.get("adapters", {}).get("sha256") != file_sha256(folder / ADAPTERS):
        raise ValueError(f"{run}/{ADAPTERS} is not the adapter its record names (sha256 differs): rerun it")
    return WarmStart(folder, run, record, hashlib.sha256(raw).hexdigest(), trained)


def warm_spending(spent: Budget, own_uses: dict[str, list], warm: WarmStart, task: Task) -> Budget:
    """The row's budget with SFT's part: its optimizer steps added, its labelled examples in the union (a gold
    target SFT trained on and the row seeded counts once), and a summary that states both parts."""
    sft = warm.record["budget"]
    uses = {use: list(own_uses.get(use, [])) + list(sft_uses) for use, sft_uses in warm.labelled_examples(task).items()}
    total, detail = labelled_counts({**own_uses, **uses})
    sft_detail = ", ".join(f"{use} {n}" for use, n in sft["labelled_detail"].items())
    summary = (f"warm start from {warm.run} ({sft['optimizer_steps']} SFT steps, {sft['labelled_items']} labelled "
               f"items: {sft_detail}, no reward), then {spent.summary}")
    return replace(spent, optimizer_steps=spent.optimizer_steps + sft["optimizer_steps"], summary=summary,
                   labelled_items=total, labelled_detail=detail)
