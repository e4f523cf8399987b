"""Evaluation of given trained weights, in one process or as one process of a gloo group (run as a script by
tests/test_ddp.py with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set): the harness shards the batches over
the group and gathers them, and process 0 writes what it got to a JSON file."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from gfnbench.catalog import get_method
from gfnbench.evaluation import evaluate
from gfnbench.methods import RunContext
from gfnbench.models import load_model
from gfnbench.profiles import get_profile
from gfnbench.tasks import get_task


def one_question_batches():
    """The smoke profile with one question per evaluation batch, so every split has several batches to shard."""
    return replace(get_profile("smoke"), eval_batch=1)


def evaluate_with_weights(task_name: str, method: str, adapters: Path, profile, fit: bool) -> tuple[dict, list]:
    """Build the method, fit it when its evaluation networks only exist after training (the M-step row's
    classifier), put the saved weights in (adapters.pt: one {name: tensor} per evaluation network), evaluate."""
    task, lm = get_task(task_name), load_model(profile.model)
    impl = get_method(method).factory(task, lm, RunContext(seed=0, profile=profile, method=method))
    if fit:
        impl.fit()
    for module, state in zip(impl.evaluation_modules(), torch.load(adapters), strict=True):
        missing = set(state) - {name for name, _ in module.named_parameters()}
        assert not missing, missing
        module.load_state_dict(state, strict=False)
    metrics, samples, _ = evaluate(impl, task, profile, 0)
    return json.loads(json.dumps(metrics)), json.loads(json.dumps(samples))


if __name__ == "__main__":
    task_name, method, adapters, out = sys.argv[1:5]
    torch.distributed.init_process_group("gloo")
    metrics, samples = evaluate_with_weights(task_name, method, Path(adapters), one_question_batches(), fit=False)
    if torch.distributed.get_rank() == 0:
        Path(out).write_text(json.dumps({"metrics": metrics, "samples": samples}))
    torch.distributed.destroy_process_group()
