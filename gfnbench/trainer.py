"""The Lightning Trainer every trained method runs, built from the run's profile and context.

Kept out of `methods.py` so the method interface imports no Lightning, checkpoint or device code.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from gfnbench.methods import RunContext


# --logger NAME -> (the module it needs, the pip install that provides it); csv needs nothing beyond Lightning
LOGGER_PACKAGES = {"csv": None, "tensorboard": ("tensorboard", "pip install 'gfnbench[tensorboard]'"),
                   "wandb": ("wandb", "pip install 'gfnbench[wandb]'")}


def check_logger(name: str) -> None:
    """A known logger whose package is installed, else one line naming the pip install (before any work)."""
    import importlib.util

    if name not in LOGGER_PACKAGES:
        raise ValueError(f"--logger must be one of {', '.join(LOGGER_PACKAGES)}, got {name!r}")
    needs = LOGGER_PACKAGES[name]
    if needs is not None and importlib.util.find_spec(needs[0]) is None:
        raise ValueError(f"--logger {name} needs the {needs[0]} package, which is not installed: {needs[1]} "
                         f"(or run with --logger csv)")


def make_loggers(name: str, log_dir, run_name: str) -> list:
    """The run's Lightning loggers: the CSV log (train/metrics.csv, always: checkpoints keep its rows and resume
    it) and, for `tensorboard` or `wandb`, that one beside it in train/ (wandb offline: nothing leaves the host;
    `wandb sync` uploads it later)."""
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(str(log_dir), name="", version="")]
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(log_dir), name="tensorboard", version=""))
    elif name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(name=run_name, save_dir=str(log_dir), offline=True, project="gfnbench"))
    return loggers


def make_trainer(ctx: RunContext, checkpoints: bool = False, model: torch.nn.Module | None = None, **settings):
    """The Lightning Trainer every trained method uses, on the run's accelerator, devices, strategy and precision
    (`ctx.profile`; one CPU process by default; bf16-true trains at Lightning's 32-true, see precision.py): CSV
    logs in the run's train/ folder (when it has one), every step logged, no sanity validation. Data loaders are
    never re-sharded by Lightning (`use_distributed_sampler` off): in a multi-process run each process draws its
    own prompts from its own seed (devices.rank_seed). `ctx.profile.logger` adds TensorBoard or W&B beside the CSV.
    `checkpoints` (modules that save their whole training state, see checkpoints.py) adds atomic checkpoints
    every `ctx.checkpoint_every` steps when the run has a checkpoint folder; `model` (the network trained) lets
    FSDP shard it by transformer block; `settings` add the method's own."""
    import lightning as L

    from gfnbench.checkpoints import AtomicCheckpointIO, checkpoint_callback
    from gfnbench.devices import strategy_for
    from gfnbench.precision import lightning_precision

    prof = ctx.profile
    logger = make_loggers(prof.logger, ctx.log_dir, run_name(ctx)) if ctx.log_dir else False
    callbacks = list(settings.pop("callbacks", []))
    saving = checkpoints and ctx.checkpoint_dir is not None
    if saving:
        callbacks.append(checkpoint_callback(ctx.checkpoint_dir, ctx.checkpoint_every))
    return L.Trainer(accelerator=prof.accelerator, devices=prof.devices, strategy=strategy_for(prof, model),
                     precision=lightning_precision(prof.precision), use_distributed_sampler=False,
                     logger=logger, enable_checkpointing=saving, enable_model_summary=False, num_sanity_val_steps=0,
                     deterministic=False, log_every_n_steps=1, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                     **settings)


def run_name(ctx: RunContext) -> str:
    """'<task>-<method>-seed<k>', the W&B run's name, from the run folder its log is in (runs/<task>/<method>/
    seed<k>/train, or a folder below it)."""
    seed_dir = next((p for p in Path(ctx.log_dir).parents if p.name.startswith("seed")), Path(ctx.log_dir))
    return f"{seed_dir.parent.parent.name}-{seed_dir.parent.name}-{seed_dir.name}"
