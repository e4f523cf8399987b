"""Where a run computes: its accelerator, devices, strategy and precision, the device its tensors live on, seeded
generators there, and the processes of a multi-process (DDP/FSDP) run.

Lightning does the distribution (process launch, gradient all-reduce, sharding); this module only says which
process this is and moves Python objects between processes (evaluation samples, per-process training state).
One process on the CPU is the default and the reference: there every helper is the identity, so a run's numbers
do not change with these settings left alone.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager

import torch

from gfnbench.precision import check_precision

ACCELERATORS = ("auto", "cpu", "gpu")
STRATEGIES = ("auto", "ddp", "fsdp")


def check_compute(accelerator: str, devices: int, strategy: str, precision: str) -> None:
    """Refuse settings Lightning would only reject after the model is loaded (or silently ignore)."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"--devices must be an integer >= 1, got {devices!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    check_precision(precision)
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("--accelerator gpu, but torch sees no CUDA device (is this the CPU build of torch?)")
    if accelerator == "gpu" and devices > torch.cuda.device_count():
        raise ValueError(f"--devices {devices}, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if devices > 1 and strategy == "auto":
        raise ValueError(f"--devices {devices} needs --strategy ddp or fsdp (say which: they differ in memory)")
    if strategy == "fsdp" and uses_cpu(accelerator):
        raise ValueError("--strategy fsdp needs GPUs (torch's FSDP shards over CUDA devices); on the CPU use ddp")


def uses_cpu(accelerator: str) -> bool:
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def multi_process(profile) -> bool:
    return profile.devices > 1


def run_device(profile) -> torch.device:
    """The device this process's model lives on: the CPU, or the CUDA device of its local rank."""
    if uses_cpu(profile.accelerator):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if multi_process(profile) else 0)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (its first parameter's device); the CPU for a model without any."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` (a sampler's draws must come from a generator on the probabilities' device)."""
    return torch.Generator(device=device).manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Process `rank`'s seed: the run's own for rank 0 (so one process is the reference run), a hash of both
    for the others (independent streams, the same for the same seed and rank)."""
    if rank == 0:
        return seed
    return derived_seed(f"{seed}/rank{rank}")


def derived_seed(key: str) -> int:
    """A 63-bit seed hashed from a key: independent streams for distinct keys, the same for the same key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def rank() -> int:
    """This process's global rank: the process group's once it exists, else what the launcher put in the
    environment (Lightning's launcher: LOCAL_RANK; torchrun: RANK), else 0."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def launch(profile) -> None:
    """Start the run's other processes and the process group, through Lightning (Fabric's launcher re-runs this
    command once per extra device, as the Trainer's would at its first `fit`). Done at the start of a run, so
    every process runs the same sequence of trainings and evaluations (each process joins every collective)."""
    if not multi_process(profile) or world_size() > 1:
        return
    from lightning.fabric import Fabric

    Fabric(accelerator=profile.accelerator, devices=profile.devices, strategy=profile.strategy).launch()


def gather(obj) -> list:
    """`obj` of every process, in rank order ([obj] with one process)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's `obj` in every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def strategy_for(profile, model: torch.nn.Module | None = None):
    """Lightning's strategy for the run: its name, or for FSDP a strategy that shards each transformer block
    (the classes the model lists in `_no_split_modules`), so no device ever holds the whole model in training."""
    if profile.strategy != "fsdp":
        return profile.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    names = set(getattr(model, "_no_split_modules", None) or []) if model is not None else set()
    blocks = {type(m) for m in (model.modules() if model is not None else []) if type(m).__name__ in names}
    return FSDPStrategy(auto_wrap_policy=blocks or None, use_orig_params=True)


@contextmanager
def full_parameters(module: torch.nn.Module | None):
    """Every parameter whole while evaluating a module that FSDP trained sharded (the sampler calls submodules
    directly, outside FSDP's forward); a plain or DDP-trained module is left as it is."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    trainer = getattr(module, "_trainer", None)
    root = getattr(getattr(trainer, "strategy", None), "model", None)
    if not isinstance(root, FullyShardedDataParallel):
        yield
        return
    with FullyShardedDataParallel.summon_full_params(root, writeback=False, recurse=True):
        yield
