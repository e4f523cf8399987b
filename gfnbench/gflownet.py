"""The GFlowNet rows (paper §3; docs/paper.md#the-method): modified SubTB, and TB with a learned log Z on rng.

Their settings, module and training live in gflownet_training.py, which gflownet_mstep shares; the names below
are re-exported so `gfnbench.gflownet` stays the import path of the GFlowNet row's parts.
"""
from __future__ import annotations

from gfnbench.gflownet_training import (
    GFlowNetConfig,
    GFlowNetMethod,
    GFlowNetModule,
    LogZHead,
    fit_module,
    invalid_pair_share,
)
from gfnbench.methods import register_method

__all__ = ["GFlowNetConfig", "GFlowNetMethod", "GFlowNetModule", "GFlowNetSubTB", "GFlowNetTB", "LogZHead",
           "fit_module", "invalid_pair_share"]


@register_method("gflownet", "GFlowNet fine-tuning (LoRA, modified SubTB, lambda = 1, replay + tempered exploration)")
class GFlowNetSubTB(GFlowNetMethod):
    loss = "subtb"


@register_method("gflownet_tb", "GFlowNet fine-tuning with trajectory balance and a prompt-conditioned log Z",
                 tasks=("rng", "rng_peaked", "rng_eos", "rng_peaked_eos"))
class GFlowNetTB(GFlowNetMethod):
    loss = "tb"
