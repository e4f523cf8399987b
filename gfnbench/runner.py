"""One run: preflight's checked plan -> train -> evaluate -> record.

`run` checks every input first (preflight) and hands the plan to `run_plan`, which trusts it: nothing is resolved
or validated twice. A bench calls `run_plan` directly with the plans its own preflight made. A run that fails leaves
no folder behind, only a checkpoint that a rerun can resume (see `clear_failed_run`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import random
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from gfnbench import locks
from gfnbench.checkpoints import (
    LAST,
    checkpoint_damage,
    prepare_resume,
    remove_checkpoints,
    run_identity,
    write_identity,
)
from gfnbench.devices import full_parameters, gather, launch, rank, run_device, world_size
from gfnbench.evaluation import eval_questions, evaluate, exact_metrics_na, exact_outcomes
from gfnbench.methods import METHODS, Method, RunContext
from gfnbench.models import LanguageModel, load_model
from gfnbench.plans import RunPlan
from gfnbench.precision import cast_frozen_base
from gfnbench.preflight import check_run, construct_task
from gfnbench.profiles import Profile
from gfnbench.records import (
    RECORD,
    atomic_write_bytes,
    check_writable,
    data_fingerprint,
    examples_fingerprint,
    git_commit,
    machine,
    package_versions,
    run_dir,
    write_run,
)
from gfnbench.tasks import Task
from gfnbench.warm_start import (
    SFT,
    WarmStart,
    no_adapter_error,
    read_warm_start,
    sft_folder,
    sft_run_state,
    wants_sft,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run(task: str, method: str, seed: int, profile: str = "smoke", results_dir: str | None = None,
        model: str | None = None, overwrite: bool = False, data: str | None = None,
        settings: dict | None = None, resume: bool = True, keep_checkpoints: bool = False,
        checkpoint_every: int = 10, compute: dict | None = None, save_adapters: bool = True) -> Path:
    """Train (if the method trains), evaluate and write one run record. Returns the record's folder.

    `settings` maps method names to overrides of their settings ({"gflownet": {"lr": 3e-4}}); `compute` overrides
    the profile's accelerator, devices, strategy and precision. Training saves a checkpoint every
    `checkpoint_every` steps into the run folder; `resume` continues from one a killed run of the same settings
    left (False: start again from step 0), and it is removed once the record is written unless
    `keep_checkpoints`. With several processes (--devices N) every process trains and evaluates its share, and
    process 0 alone writes the record."""
    # every input, before anything is created or loaded
    plan = check_run(task, method, seed, profile, results_dir, model, data, settings=settings, compute=compute)
    return run_plan(plan, overwrite=overwrite, resume=resume, keep_checkpoints=keep_checkpoints,
                    checkpoint_every=checkpoint_every, save_adapters=save_adapters)


def run_plan(plan: RunPlan, overwrite: bool = False, resume: bool = True, keep_checkpoints: bool = False,
             checkpoint_every: int = 10, save_adapters: bool = True) -> Path:
    """`run` on inputs preflight has already checked (see `run` for the options). Whatever stops it before the
    record is written, its run folder goes (and the folders created for it), but for a checkpoint to resume.
    A row set to start from SFT (`init: sft`) gets the same seed's SFT run first (`warm_start_source`)."""
    out = run_dir(plan.root, plan.task.name, plan.method, plan.seed)
    created = missing_folders(out)
    lock = None
    try:
        check_writable(plan.root)
        lock = claim_run(out, overwrite)       # process 0 only, before any other process starts
        warm = warm_start_source(plan) if wants_sft(plan) else None
        if lock is not None:
            prepare_run_folder(plan, out, resume, warm)
        return run_claimed(plan, out, overwrite, resume, keep_checkpoints, checkpoint_every, save_adapters, warm)
    except BaseException:
        if lock is not None:
            clear_failed_run(out)
        raise
    finally:
        if lock is not None:
            lock.release()
        remove_empty(created)


def run_claimed(plan: RunPlan, out: Path, overwrite: bool, resume: bool, keep_checkpoints: bool,
                checkpoint_every: int, save_adapters: bool, warm: WarmStart | None = None) -> Path:
    """Train, evaluate and write the record of a run whose folder process 0 holds."""
    launch(plan.profile)                   # the other processes (--devices N > 1), through Lightning
    seed_everything(plan.seed)
    lm: LanguageModel = load_model(plan.model)
    cast_frozen_base(lm.model, plan.profile.precision)     # bf16-true: bf16 base, before any LoRA is added
    lm.model.to(run_device(plan.profile))
    started = time.time()
    ctx = RunContext(seed=plan.seed, profile=plan.profile, log_dir=out / "train", settings=plan.settings,
                     method=plan.method, checkpoint_dir=out / "checkpoints", checkpoint_every=checkpoint_every,
                     resume=resume, warm_start=warm)
    impl = plan.spec.factory(plan.task, lm, ctx)
    extra = train(impl, plan)
    with full_parameters(impl.trained_module()):
        metrics, samples, per_question = evaluate(impl, plan.task, plan.profile, plan.seed,
                                                  label=f"{plan.method} seed {plan.seed}")
        adapters = adapter_bytes(impl) if save_adapters and plan.spec.trains else None
        outcomes = exact_outcomes(impl, plan.task, plan.profile)
    extras, prints = gather(extra), (gather(weights_fingerprint(impl)) if world_size() > 1 else [])
    if rank() == 0:
        record = run_record(plan, lm, impl, metrics, per_question)
        record.update({"wall_time_s": time.time() - started, **extra, **processes_field(extras, prints)})
        if outcomes:
            record["exact_outcomes"] = outcomes
        if warm is not None:
            record["warm_start"] = warm.provenance()
        if adapters is not None:
            atomic_write_bytes(out / "adapters.pt", adapters)
            record["adapters"] = {"file": "adapters.pt", "bytes": len(adapters),
                                  "sha256": hashlib.sha256(adapters).hexdigest()}
        write_run(out, record, samples, overwrite=overwrite)
        if not keep_checkpoints:
            remove_checkpoints(ctx.checkpoint_dir)
    return out


def warm_start_source(plan: RunPlan) -> WarmStart:
    """The same seed's SFT run in the same results folder: reused when its record and adapter are there, else
    trained first as a run of its own (sft's default settings), which the next row started from SFT reuses. Its
    lock is waited for, so a bench job training it meanwhile is not run twice; every process of a multi-process
    run meets after it, so none reads the adapter before process 0 has written it."""
    folder = sft_folder(plan)
    state = sft_run_state(folder)
    if state == "missing":
        with locks.acquire(folder, wait=True) if rank() == 0 else contextlib.nullcontext():
            state = sft_run_state(folder)
            if state == "missing":
                print(f"[gfnbench] {plan.method} starts from {SFT} seed {plan.seed}, which has no run yet in "
                      f"{plan.root}: training it first")
                run_plan(replace(plan, task=construct_task(type(plan.task), plan.task.name, plan.data),
                                 spec=METHODS[SFT], settings={}))
                gather(None)
                return read_warm_start(folder, plan, trained=True)
    if state == "no adapter":
        raise no_adapter_error(folder, plan)
    return read_warm_start(folder, plan, trained=False)


def prepare_run_folder(plan: RunPlan, out: Path, resume: bool, warm: WarmStart | None = None) -> None:
    """Process 0, before the model loads and before other processes start: what a killed run left is resumed
    (a checkpoint of the same settings), or set aside and said so in one line; its train/ log goes either way
    (a checkpoint keeps the rows logged before it). A row that does not checkpoint says that it restarts."""
    if not plan.spec.trains:
        return
    interrupted = not (out / RECORD).exists() and (out / "train").is_dir()
    identity = run_identity_of(plan, warm)
    note = prepare_resume(out / "checkpoints", identity, resume)
    resumable = getattr(plan.spec.factory, "resumable", False)
    if note is None and interrupted and not resumable:
        note = (f"{plan.method} does not checkpoint its training (see checkpoints.py): the interrupted run in {out} "
                f"trains again from step 0")
    if interrupted:
        shutil.rmtree(out / "train")
    if resumable:
        write_identity(out / "checkpoints", identity)
    if note:
        print(f"[gfnbench] {note}")


def run_identity_of(plan: RunPlan, warm: WarmStart | None = None) -> dict:
    """What a checkpoint must have been written by to be resumed: the same task, method, seed, settings, profile
    (but its process count: a mismatch there is refused at load, naming the count to resume with), model, data,
    and for a row started from SFT, that SFT run's adapter (a retrained SFT makes the checkpoint another run's)."""
    profile = {k: v for k, v in plan.profile.as_dict().items() if k not in ("devices", "logger")}   # logger: no number
    started = {"warm_start": warm.record["adapters"]["sha256"]} if warm is not None else {}
    return run_identity({"task": plan.task.name, "task_settings": plan.task.config(), "method": plan.method,
                         "seed": plan.seed, "settings": plan.settings, "profile": profile, "model": plan.model,
                         "data_sha256": data_fingerprint(plan.data) if plan.data else None, **started})


def missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first: what a run would create."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove each folder if it is empty (deepest first), leaving any that holds something."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def clear_failed_run(out: Path) -> None:
    """Empty the folder of a run that wrote no record, but for its lock (released next) and a sound checkpoint
    that `--resume` can continue from. A failed --overwrite run leaves the old record's folder as it is."""
    if (out / RECORD).exists():
        return
    checkpoints = out / "checkpoints"
    sound = (checkpoints / LAST).is_file() and checkpoint_damage(checkpoints / LAST) is None
    with contextlib.suppress(OSError):
        for entry in out.iterdir():
            if entry.name == locks.LOCK_NAME or (sound and entry == checkpoints):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        for temp in checkpoints.glob("*.tmp") if sound else ():
            temp.unlink(missing_ok=True)


def train(impl: Method, plan: RunPlan) -> dict:
    """The method's training (nothing for a method that does not train), its modules then on the run's device
    (Lightning hands a trained module back on the CPU). Returns the method's extra record fields."""
    extra = impl.fit()
    for module in impl.evaluation_modules():
        module.to(run_device(plan.profile))
    return extra


def claim_run(out: Path, overwrite: bool):
    """Process 0's lock on the run folder (RunInProgress if another run has it; released on return or exit)
    after checking that no record is there; other processes of a multi-process run return None."""
    if rank() != 0:
        return None
    lock = locks.acquire(out)
    if (out / "record.json").exists() and not overwrite:
        lock.release()
        raise FileExistsError(f"{out / 'record.json'} exists: pass --overwrite true to replace it")
    return lock


def run_record(plan: RunPlan, lm: LanguageModel, impl: Method, metrics: dict, per_question: dict) -> dict:
    """The record's fields (the caller adds wall time and the method's training extras)."""
    task_obj, prof, data = plan.task, plan.profile, plan.data
    return {
        "task": task_obj.name, "method": plan.method, "seed": plan.seed, "profile": prof.name,
        "precision": prof.precision,
        "model": lm.model_id, "scoring_model": f"{lm.model_id}, adapters off, given the task prompt",
        "data": task_obj.data_source, "data_sha256": data_fingerprint(data or task_obj.builtin_data)
        if data or task_obj.builtin_data else None,
        "data_builtin": not data, "examples_sha256": examples_fingerprint(task_obj), "model_source": lm.source,
        "metrics": metrics, "per_question": per_question, "metric_info": task_obj.metric_info,
        "scored_against": task_obj.scored_against,
        "metric_directions": task_obj.metric_directions, "task_version": task_obj.version,
        "settings": plan.settings, "budget": run_budget(impl), "metrics_na": exact_metrics_na(impl, task_obj),
        "config": run_config(prof, impl, task_obj), "versions": package_versions(), "git_commit": git_commit(),
        "machine": machine(),
    }


def run_budget(impl: Method) -> dict | None:
    """The whole run's budget (`Method.spending()`). With N processes each draws and scores its own samples, so
    the plan is N times one process's reward evaluations; optimizer steps are shared (the gradients are
    all-reduced); `reward_calls` is already the sum of every process's count (trained.TrainedModule gathers them
    when training ends). Test-time reward calls are this process's evaluation share: the summary says so."""
    budget = impl.spending()
    if budget is None or world_size() == 1:
        return budget and asdict(budget)
    n = world_size()
    summary = f"{budget.summary} in each of {n} processes"
    if budget.test_reward_calls:
        summary += " (test-time reward calls: process 0's share of the evaluation)"
    return asdict(replace(budget, reward_evaluations=budget.reward_evaluations * n, summary=summary))


def processes_field(extras: list[dict], prints: list[str]) -> dict:
    """A multi-process run's record keeps every process's training curve (its own prompts and samples; the
    top-level `train_curve` is process 0's) and the fingerprint of the weights each evaluated with (equal when
    the gradients were all-reduced as they should be). Nothing for one process."""
    if len(extras) == 1:
        return {}
    return {"processes": {"count": len(extras), "train_curves": [e.get("train_curve") for e in extras],
                          "weights_sha256": prints}}


def weights_fingerprint(impl: Method) -> str:
    """sha256 of the trained weights of every network evaluation runs (names and values)."""
    from gfnbench.policy import trainable_state

    digest = hashlib.sha256()
    for module in impl.evaluation_modules():
        for name, value in sorted(trainable_state(module).items()):
            digest.update(name.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def adapter_bytes(impl: Method) -> bytes:
    """The trained weights of every network evaluation runs ([{name: tensor}] in `evaluation_modules` order:
    LoRA adapters and heads), for `--save_adapters` (kilobytes to megabytes)."""
    from gfnbench.policy import trainable_state

    buffer = io.BytesIO()
    torch.save([{k: v.cpu() for k, v in trainable_state(m).items()} for m in impl.evaluation_modules()], buffer)
    return buffer.getvalue()


def run_config(prof: Profile, impl: Method, task: Task) -> dict:
    """The settings a run record keeps: profile, method (as built), task and evaluation."""
    return {"profile": prof.as_dict(), "method": impl.config(), "task": type(task).__name__,
            "task_settings": task.config(), "eval_samples": prof.eval_samples or task.eval_samples,
            "eval_questions": eval_questions(prof, task), "eval_temperature": task.eval_temperature}
