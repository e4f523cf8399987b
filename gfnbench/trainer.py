"""The Lightning Trainer every trained method runs, built from the run's profile and context.

Kept out of `methods.py` so the method interface imports no Lightning, checkpoint or device code.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from gfnbench.methods import RunContext


def make_trainer(ctx: RunContext, checkpoints: bool = False, model: torch.nn.Module | None = None, **settings):
    """The Lightning Trainer every trained method uses, on the run's accelerator, devices, strategy and precision
    (`ctx.profile`; one CPU process by default; bf16-true trains at Lightning's 32-true, see precision.py): CSV
    logs in the run's train/ folder (when it has one), every step logged, no sanity validation. Data loaders are
    never re-sharded by Lightning (`use_distributed_sampler` off): in a multi-process run each process draws its
    own prompts from its own seed (devices.rank_seed).
    `checkpoints` (modules that save their whole training state, see checkpoints.py) adds atomic checkpoints
    every `ctx.checkpoint_every` steps when the run has a checkpoint folder; `model` (the network trained) lets
    FSDP shard it by transformer block; `settings` add the method's own."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from gfnbench.checkpoints import AtomicCheckpointIO, checkpoint_callback
    from gfnbench.devices import strategy_for
    from gfnbench.precision import lightning_precision

    prof = ctx.profile
    logger = CSVLogger(str(ctx.log_dir), name="", version="") if ctx.log_dir else False
    callbacks = list(settings.pop("callbacks", []))
    saving = checkpoints and ctx.checkpoint_dir is not None
    if saving:
        callbacks.append(checkpoint_callback(ctx.checkpoint_dir, ctx.checkpoint_every))
    return L.Trainer(accelerator=prof.accelerator, devices=prof.devices, strategy=strategy_for(prof, model),
                     precision=lightning_precision(prof.precision), use_distributed_sampler=False,
                     logger=logger, enable_checkpointing=saving, enable_model_summary=False, num_sanity_val_steps=0,
                     deterministic=False, log_every_n_steps=1, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                     **settings)
