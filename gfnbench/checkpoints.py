"""Resumable training: Lightning checkpoints of what a run cannot recompute, written atomically into the run folder.

A checkpoint holds the trainable weights only (LoRA adapters, log Z, value heads: megabytes, not the frozen base
model), the optimizer and scheduler (Lightning's own), the prompt loader's position, and each process's
`training_state()` (`ResumableModule`: RNG states, replay buffers, KL controller, training curve). A run killed at
any step and resumed from its last checkpoint ends with the same record as an uninterrupted run with the same seed.
Rows whose training is not checkpointed (SFT: early stopping keeps its best weights in memory) restart, and say so.

A checkpoint also keeps the rows of the run's train/metrics.csv logged so far, so a resumed run's log equals the
uninterrupted one's. Beside it, run.json says which run wrote it (task, method, seed, settings, profile, model,
data): a rerun resumes only a checkpoint of the same run (`prepare_resume`); a damaged one is set aside, named.
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from gfnbench.devices import gather, rank, world_size
from gfnbench.records import atomic_write_bytes, atomic_write_text

LAST = "last.ckpt"
IDENTITY = "run.json"          # beside last.ckpt: the run that wrote it
DAMAGED = ".damaged"           # a damaged checkpoint is renamed last.ckpt.damaged, never deleted


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


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint without its warning that the folder is not empty: a run's checkpoints/ holds its run.json
    from the start, and the last.ckpt of a resumed run is there on purpose (the run says so in one line)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)


def checkpoint_callback(folder: Path, every: int) -> ModelCheckpoint:
    """`last.ckpt` in `folder`, replaced every `every` optimizer steps."""
    return RunCheckpoint(dirpath=str(folder), filename="last", every_n_train_steps=max(1, every), save_top_k=1,
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
        checkpoint["logged_rows"] = logged_rows(self.trainer)

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
        restore_logged_rows(self.trainer, checkpoint.get("logged_rows", []))


def remove_checkpoints(folder: Path | None) -> None:
    if folder is None or not Path(folder).is_dir():
        return
    for file in Path(folder).iterdir():
        if file.name.endswith((".ckpt", ".tmp")) or file.name == IDENTITY:     # (.tmp: a temp file left by a kill)
            file.unlink()
    if not any(Path(folder).iterdir()):
        Path(folder).rmdir()


# --------------------------------------------------------------------------- the training log a checkpoint keeps

def _csv_log(trainer):
    """The CSV log writer of the run's train/ folder on this process (None: no CSV logger, or not process 0)."""
    if trainer is None or rank() != 0:
        return None
    loggers = [lg for lg in trainer.loggers if isinstance(lg, CSVLogger)]
    return loggers[0].experiment if loggers else None


def pending_row(trainer) -> dict | None:
    """The row Lightning logs for the step being checkpointed. ModelCheckpoint saves in `on_train_batch_end`, just
    before the training loop logs that step (`_TrainingEpochLoop.advance` -> `update_train_step_metrics`), so a
    run killed between the two would resume without it. Built as `_LoggerConnector.log_metrics` builds it."""
    from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

    connector, loop = trainer._logger_connector, trainer.fit_loop.epoch_loop
    if loop._should_accumulate() or not connector.should_update_logs:
        return None
    row = convert_tensors_to_scalars(connector.metrics["log"])
    if not row:
        return None
    step = row.pop("step", None)
    row.setdefault("epoch", trainer.current_epoch)
    row["step"] = int(step) if step is not None else loop._batches_that_stepped
    return row


def logged_rows(trainer) -> list[dict]:
    """Every row of the run's train/metrics.csv up to and including the step being checkpointed."""
    writer = _csv_log(trainer)
    if writer is None:
        return []
    rows = []
    if os.path.isfile(writer.metrics_file_path):
        with open(writer.metrics_file_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    rows += [dict(row) for row in writer.metrics]
    pending = pending_row(trainer)
    return rows + ([pending] if pending else [])


def restore_logged_rows(trainer, rows: list[dict]) -> None:
    """Put a checkpoint's log rows back ahead of the resumed run's own (the writer starts metrics.csv afresh)."""
    writer = _csv_log(trainer)
    if writer is not None and rows:
        writer.metrics[:0] = [dict(row) for row in rows]


# --------------------------------------------------------------------------- whether a rerun resumes

def checkpoint_damage(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded (truncated, not a torch archive, a part failing its CRC), or None. A torch
    checkpoint is a zip archive with a CRC per part: checking them reads the file once and unpickles nothing."""
    try:
        with zipfile.ZipFile(path) as archive:
            failed = archive.testzip()
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"not a readable torch checkpoint: {err}"
    if failed:
        return f"its part {failed} fails its checksum"
    if not any(name.endswith("data.pkl") for name in names):
        return "no data.pkl in it"
    return None


def run_identity(fields: dict) -> dict:
    """What makes two runs the same run, as JSON data (tuples as lists), for run.json and for comparing with it."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def differing(saved: dict | None, identity: dict) -> list[str]:
    """The identity fields a checkpoint's run.json differs in (every field when it has none)."""
    if saved is None:
        return sorted(identity)
    return sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))


def read_identity(folder: Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / IDENTITY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_identity(folder: Path, identity: dict) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(folder) / IDENTITY, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def prepare_resume(folder: Path, identity: dict, resume: bool) -> str | None:
    """Before training (process 0, before any other starts): leave `folder`/last.ckpt only when this run continues
    from it, i.e. `resume` and the checkpoint is sound and was written by the same run; set a damaged one aside
    (last.ckpt.damaged) and remove one of other settings or one `resume` False discards. Returns the one line that
    says what happened (None: there was no checkpoint)."""
    path = Path(folder) / LAST
    if not path.is_file():
        return None
    if not resume:
        path.unlink()
        return f"--resume false: removed {path}; training starts from step 0"
    damage = checkpoint_damage(path)
    if damage:
        aside = path.with_name(path.name + DAMAGED)
        os.replace(path, aside)
        return f"{path} is damaged ({damage}): set aside as {aside.name}; training starts from step 0"
    changed = differing(read_identity(folder), identity)
    if changed:
        path.unlink()
        return (f"{path} was written by a run with other settings ({', '.join(changed)}): removed; training starts "
                f"from step 0")
    return f"resuming the interrupted run from {path} (--resume false starts it again from step 0)"
