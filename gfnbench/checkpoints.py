"""Resumable training: Lightning checkpoints of what a run cannot recompute, written atomically into the run folder.

A checkpoint holds the trainable weights only (LoRA adapters, log Z, value heads: megabytes, not the frozen base
model), the optimizer and scheduler (Lightning's own), the prompt loader's position, and each process's
`training_state()` (`ResumableModule`: RNG states, replay buffers, KL controller, training curve). A run killed at
any step and resumed from its last checkpoint ends with the same record as an uninterrupted run with the same seed.
Rows whose training is not checkpointed (SFT: early stopping keeps its best weights in memory) restart, and say so.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from gfnbench.devices import gather, rank, world_size
from gfnbench.records import atomic_write_bytes

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary name in the same folder, then rename: a kill mid-write leaves the old checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


class PromptLoader(DataLoader):
    """Batches of training-example indices in a seeded order, resumable mid-run: Lightning saves `state_dict()`
    in each checkpoint and hands it back on resume, so a resumed run reads the prompts the interrupted one
    would have read next. The order is exactly that of torch's RandomSampler with replacement and this seed (or
    its WeightedRandomSampler, when the task weighs its training prompts)."""

    def __init__(self, n_examples: int, batch_size: int, batches: int, seed: int,
                 weights: list[float] | None = None):
        generator = torch.Generator().manual_seed(seed)
        if weights is None:
            sampler = RandomSampler(range(n_examples), replacement=True, num_samples=batches * batch_size,
                                    generator=generator)
        else:
            if len(weights) != n_examples or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"prompt weights must be {n_examples} non-negative numbers, not all 0")
            sampler = WeightedRandomSampler(weights, batches * batch_size, replacement=True, generator=generator)
        order = list(sampler)
        super().__init__(order, batch_size=batch_size)
        self.order, self.position = order, 0

    def __iter__(self):
        size = self.batch_size
        while self.position < len(self.order):
            batch = self.order[self.position: self.position + size]
            self.position += size
            yield torch.tensor(batch, dtype=torch.long)

    def __len__(self) -> int:
        return (len(self.order) - 1) // self.batch_size + 1 if self.order else 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def checkpoint_callback(folder: Path, every: int) -> ModelCheckpoint:
    """`last.ckpt` in `folder`, replaced every `every` optimizer steps."""
    return ModelCheckpoint(dirpath=str(folder), filename="last", every_n_train_steps=max(1, every), save_top_k=1,
                           enable_version_counter=False)


def resume_path(folder: Path | None, resume: bool) -> str | None:
    """The checkpoint to continue from, if resuming and one was written."""
    if not resume or folder is None:
        return None
    path = Path(folder) / LAST
    return str(path) if path.is_file() else None


def trainable_only(state_dict: dict, module: torch.nn.Module) -> dict:
    """The entries of a module's state dict that training changes (its requires_grad parameters: LoRA adapters,
    log Z or value heads); the frozen base model is rebuilt from its own files."""
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state_dict.items() if k in trainable}


class ResumableModule:
    """LightningModule mixin: checkpoints keep the trainable weights only and every process's `training_state()`
    (what the module cannot recompute), so a resumed run continues exactly. A multi-process run stores each
    process's state (their buffers and random streams differ) and must resume with as many processes."""

    def training_state(self) -> dict:
        raise NotImplementedError

    def load_training_state(self, state: dict) -> None:
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = trainable_only(checkpoint["state_dict"], self)
        checkpoint["process_states"] = gather(self.training_state())      # every process calls this hook

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.strict_loading = False     # the frozen base model is not in the checkpoint
        states = checkpoint.get("process_states")
        if states is None:
            raise ValueError("this checkpoint was written by an older gfnbench without per-process training "
                             "state; delete the run's checkpoints/ folder to start the run again")
        if len(states) != world_size():
            raise ValueError(f"this checkpoint was written by {len(states)} process(es), this run has "
                             f"{world_size()}: resume with --devices {len(states)}")
        self.load_training_state(states[rank()])


def remove_checkpoints(folder: Path | None) -> None:
    if folder is None or not Path(folder).is_dir():
        return
    for file in Path(folder).iterdir():
        if file.name.endswith(".ckpt") or file.name.endswith(".tmp"):     # (a temp file left by a kill)
            file.unlink()
    if not any(Path(folder).iterdir()):
        Path(folder).rmdir()
