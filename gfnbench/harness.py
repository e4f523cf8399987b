"""The evaluation harness: every method is sampled and scored the same way, and each run leaves a record.

Log-likelihood is always scored by the base model (adapters off) given the task's plain prompt, whatever prompt
or decoding the method used, so the column means the same thing in every row.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gfnbench import locks
from gfnbench.catalog import get_method, methods_for
from gfnbench.checkpoints import remove_checkpoints
from gfnbench.devices import (
    broadcast,
    check_compute,
    derived_seed,
    full_parameters,
    gather,
    launch,
    model_device,
    rank,
    run_device,
    seeded_generator,
    world_size,
)
from gfnbench.methods import Method, MethodSpec, RunContext
from gfnbench.metrics import mean
from gfnbench.models import LanguageModel, adapters_off, load_model
from gfnbench.preflight import check_bench, check_run
from gfnbench.profiles import Profile, get_profile
from gfnbench.records import (
    BENCH_LOG,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    data_fingerprint,
    git_commit,
    machine,
    package_versions,
    results_root,
    run_dir,
    write_run,
)
from gfnbench.sampling import sequence_log_likelihoods
from gfnbench.tasks import Example, Task, get_task
from gfnbench.trajectories import Trajectories


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_generator(seed: int, split: str, batch_index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Each evaluation batch draws from its own seeded stream, so its samples do not depend on which process
    draws it or in what order (a sharded evaluation gathers to exactly the one-process samples). It lives on
    the model's device (the sampler draws there)."""
    return seeded_generator(derived_seed(f"{seed}/{split}/{batch_index}"), device)


def reference_log_likelihood(method: Method, task: Task, traj: Trajectories, examples: list[Example]) -> torch.Tensor:
    """[B] log p_base(sample | task prompt): the one likelihood every row of a table is scored with."""
    tok = method.lm.tokenizer
    groups = traj.group.tolist()
    prompts = {g: tok(task.prompt(examples[g]), add_special_tokens=False)["input_ids"] for g in set(groups)}
    states = [traj.state_ids[b, : int(traj.state_mask[b].sum())].tolist() for b in range(len(traj))]
    with torch.no_grad(), adapters_off(method.policy) as base:
        return sequence_log_likelihoods(base, [prompts[g] for g in groups], states, tok.pad_token_id)


def exact_metrics(method: Method, task: Task, examples: list[Example]) -> dict:
    """Tasks with an enumerable support report the method's exact distance to the target (mean over prompts)."""
    if method.exact_temperature is None:
        return {}
    method.policy.eval()
    per = [task.exact_metrics(method.policy, method.lm.tokenizer, method.prompt_for(ex), method.exact_temperature)
           for ex in examples]
    if per[0] is None:
        return {}
    return {k: mean([p[k] for p in per]) for k in per[0]}


def model_scores(method: Method, task: Task, texts: list[str], ex: Example) -> dict:
    """Metrics that need a model (e.g. subj's label predicted from each rationale): the base model, adapters off.

    A method's own hook wins over the task's (subj's prompting baselines sample a label, not a rationale)."""
    with torch.no_grad(), adapters_off(method.policy) as base:
        scores = method.score_with_model(base, method.lm.tokenizer, texts, ex)
        return task.score_with_model(base, method.lm.tokenizer, texts, ex) if scores is None else scores


def chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def eval_questions(profile: Profile, task: Task) -> int | None:
    """Questions per evaluation split: the profile's cap, raised to the task's floor on profiles that honour it
    (cpu); None means all."""
    if profile.eval_questions is None or not profile.task_eval_floor:
        return profile.eval_questions
    return max(profile.eval_questions, task.min_eval_questions)


def questions_per_batch(method: Method, profile: Profile, n: int) -> int:
    """The profile's eval_batch questions, or more for a method that returns fewer than n rows a question
    (greedy), up to the same eval_batch x n rows. Only a method that draws nothing has fewer rows, so every
    sampling method keeps its batches, and with them each batch's seeded stream."""
    return profile.eval_batch * max(1, n // max(1, method.rows_per_question(n)))


def question_scores(method: Method, task: Task, traj: Trajectories, examples: list[Example],
                    split: str) -> tuple[list[dict], list[dict]]:
    """Each question's metrics over its n samples, and the samples' rows for samples.jsonl."""
    ref = reference_log_likelihood(method, task, traj, examples)
    scores, samples = [], []
    for i, ex in enumerate(examples):
        rows = (traj.group == i).nonzero().flatten().tolist()
        texts = [traj.texts[r] for r in rows]
        q = {**task.score(texts, ex), **model_scores(method, task, texts, ex)}
        q["logp_ref"] = mean([float(ref[r]) for r in rows])
        if task.report_logp_ref_max:
            q["logp_ref_max"] = max(float(ref[r]) for r in rows)
        scores.append(q)
        samples += [{"split": split, "id": ex.id, "prompt": traj.prompts[r], "answer": ex.answer,
                     "sample": k, "text": traj.texts[r], "logp_ref": float(ref[r]),
                     "stopped": bool(traj.stopped[r])} for k, r in enumerate(rows)]
    return scores, samples


def evaluate(method: Method, task: Task, profile: Profile, seed: int,
             label: str = "") -> tuple[dict, list[dict], dict]:
    """Metrics per evaluation split (means over questions), every sample drawn, and each question's metrics
    ({split: {"ids": [...], metric: [...]}}: what the leaderboard's question-level bootstrap resamples)."""
    n = profile.eval_samples or task.eval_samples
    metrics, samples, per_question = {}, [], {}
    for split in task.eval_splits:
        examples = task.examples(split)[: eval_questions(profile, task)]
        if not examples:
            raise ValueError(f"split {split!r} of task {task.name} has no examples")
        batches = chunks(examples, questions_per_batch(method, profile, n))
        scores, split_samples = evaluate_batches(method, task, batches, n, seed, split, f"{label} {split}".strip())
        samples += split_samples
        per_question[split] = {"ids": [ex.id for ex in examples],
                               **{key: [q[key] for q in scores] for key in scores[0]}}
        metrics[split] = {key: mean(per_question[split][key]) for key in scores[0]}
        metrics[split].update(exact_metrics(method, task, examples))
    return metrics, samples, per_question


def evaluate_batches(method: Method, task: Task, batches: list[list[Example]], n: int, seed: int, split: str,
                     label: str) -> tuple[list[dict], list[dict]]:
    """Each question's metrics and every sample, in batch order. Process r of W samples and scores batches r,
    r + W, ... and the shares are gathered: every batch has its own generator, so any number of processes gives
    exactly the one-process samples and metrics."""
    device = model_device(method.policy)
    mine = {}
    for i in tqdm(range(rank(), len(batches), world_size()), desc=label, leave=False):
        with torch.no_grad():
            traj = method.sample(batches[i], n, batch_generator(seed, split, i, device))
        mine[i] = question_scores(method, task, traj, batches[i], split)
    done = {i: share for part in gather(mine) for i, share in part.items()}
    scores, samples = [], []
    for i in range(len(batches)):
        scores += done[i][0]
        samples += done[i][1]
    return scores, samples


def run_profile(profile: str, compute: dict | None = None) -> Profile:
    """The profile with this run's accelerator, devices, strategy and precision (those given), checked."""
    prof = get_profile(profile)
    given = {k: v for k, v in (compute or {}).items() if v is not None}
    unknown = set(given) - {"accelerator", "devices", "strategy", "precision"}
    if unknown:
        raise ValueError(f"unknown compute settings {sorted(unknown)}")
    prof = replace(prof, **given) if given else prof
    check_compute(prof.accelerator, prof.devices, prof.strategy, str(prof.precision))
    return prof


def load_task(task: str, data: str | None = None) -> Task:
    """The task, reading its examples from `data` (a file path) when given; tasks without data files refuse it."""
    if data is None:
        return get_task(task)
    try:
        return get_task(task, data=data)
    except TypeError as err:
        if "unexpected keyword argument 'data'" not in str(err):
            raise
        raise ValueError(f"task {task} does not read a data file (--data)") from None


def run(task: str, method: str, seed: int, profile: str = "smoke", results_dir: str | None = None,
        model: str | None = None, overwrite: bool = False, data: str | None = None,
        settings: dict | None = None, resume: bool = False, keep_checkpoints: bool = False,
        checkpoint_every: int = 10, compute: dict | None = None, save_adapters: bool = False) -> Path:
    """Train (if the method trains), evaluate and write one run record. Returns the record's folder.

    `settings` maps method names to overrides of their settings ({"gflownet": {"lr": 3e-4}}); `compute` overrides
    the profile's accelerator, devices, strategy and precision. Training saves a checkpoint every
    `checkpoint_every` steps into the run folder; `resume` continues from it, and it is removed once the record
    is written unless `keep_checkpoints`. With several processes (--devices N) every process trains and
    evaluates its share, and process 0 alone writes the record."""
    check_run(task, method, seed, profile, results_dir, model, data)   # every input, before anything is created
    prof = run_profile(profile, compute)
    task_obj = load_task(task, data)
    spec = get_method(method)
    method = spec.name
    others = sorted(set(settings or {}) - {method})
    if others:
        raise ValueError(f"settings given for {', '.join(others)}, but this run is {method}")
    overrides = settings_for(spec, settings)
    root = results_root(prof, results_dir, data)
    check_writable(root)
    out = run_dir(root, task_obj.name, method, seed)
    lock = claim_run(out, overwrite)       # process 0 only, before any other process starts
    launch(prof)                           # the other processes (--devices N > 1), through Lightning
    seed_everything(seed)
    lm: LanguageModel = load_model(model or prof.model)
    lm.model.to(run_device(prof))
    started = time.time()
    ctx = RunContext(seed=seed, profile=prof, log_dir=out / "train", settings=overrides, method=method,
                     checkpoint_dir=out / "checkpoints", checkpoint_every=checkpoint_every, resume=resume)
    impl = spec.factory(task_obj, lm, ctx)
    if resume and impl.trains and not impl.resumable and rank() == 0:
        print(f"[gfnbench] {method} does not checkpoint its training (see checkpoints.py): this run trains from "
              f"step 0, it does not resume")
    extra = impl.fit()
    for module in impl.evaluation_modules():
        module.to(run_device(prof))        # Lightning hands a trained module back on the CPU
    with full_parameters(impl.trained_module()):
        metrics, samples, per_question = evaluate(impl, task_obj, prof, seed, label=f"{method} seed {seed}")
        adapters = adapter_bytes(impl) if save_adapters else None
    extras, prints = gather(extra), (gather(weights_fingerprint(impl)) if world_size() > 1 else [])
    if rank() == 0:
        record = run_record(task_obj, method, seed, prof, lm, impl, data, overrides, metrics, per_question)
        record.update({"wall_time_s": time.time() - started, **extra, **processes_field(extras, prints)})
        if adapters is not None:
            atomic_write_bytes(out / "adapters.pt", adapters)
        write_run(out, record, samples, overwrite=overwrite)
        if not keep_checkpoints:
            remove_checkpoints(ctx.checkpoint_dir)
    if lock is not None:
        lock.release()
    return out


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


def run_record(task_obj: Task, method: str, seed: int, prof: Profile, lm: LanguageModel, impl: Method,
               data: str | None, overrides: dict, metrics: dict, per_question: dict) -> dict:
    """The record's fields (the caller adds wall time and the method's training extras)."""
    return {
        "task": task_obj.name, "method": method, "seed": seed, "profile": prof.name,
        "model": lm.model_id, "scoring_model": f"{lm.model_id}, adapters off, given the task prompt",
        "data": task_obj.data_source, "data_sha256": data_fingerprint(data) if data else None,
        "metrics": metrics, "per_question": per_question, "metric_info": task_obj.metric_info,
        "metric_directions": task_obj.metric_directions, "task_version": task_obj.version,
        "settings": overrides, "budget": (budget := impl.budget()) and asdict(budget),
        "config": run_config(prof, impl, task_obj), "versions": package_versions(), "git_commit": git_commit(),
        "machine": machine(),
    }


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


def settings_for(spec: MethodSpec, settings: dict | None) -> dict:
    """This method's overrides out of {method: overrides}, checked against its settings class."""
    return spec.check_settings(dict((settings or {}).get(spec.name) or {}))


def seeds_for(spec: MethodSpec, seeds: list[int]) -> list[int]:
    """A deterministic method (greedy, beam) gives the same record for every seed: it runs the first only."""
    return list(seeds[:1]) if spec.deterministic else list(seeds)


def default_methods(task: Task, prof: Profile) -> list[str]:
    """Every method for the task, less its `costly_methods` on profiles that skip them (said on stdout)."""
    names = methods_for(task.name)
    skipped = [m for m in names if prof.skip_costly and m in task.costly_methods]
    if skipped:
        print(f"[gfnbench] the {prof.name} profile skips {', '.join(skipped)} on {task.name} (too slow for its "
              f"time budget); run them with --methods {','.join(skipped)}")
    return [m for m in names if m not in skipped]


def bench(task: str, profile: str = "cpu", seeds: list[int] = (0, 1, 2), methods: list[str] | None = None,
          results_dir: str | None = None, model: str | None = None, overwrite: bool = False,
          data: str | None = None, settings: dict | None = None, compute: dict | None = None,
          save_adapters: bool = False, jobs: int | None = None, tables: bool = True) -> list[Path]:
    """Every method registered for the task x seeds (runs that already have a record are kept), then tables.
    With several processes (--devices N) they are started once, and all follow process 0's list of runs.
    With `jobs` > 1 (the cpu profile: one per core, up to 4) that many processes share the list through the
    run locks, each with its share of the cores' torch threads; the table comes when all are done."""
    from gfnbench.leaderboard import write_leaderboard

    check_bench(task, profile, seeds, methods, results_dir, model, data)   # every seed and method, before any run
    prof = run_profile(profile, compute)
    task_obj = load_task(task, data)
    names = [get_method(m).name for m in methods] if methods else default_methods(task_obj, prof)
    unused = sorted(set(settings or {}) - set(names))
    if unused:
        raise ValueError(f"settings given for {', '.join(unused)}, which this bench does not run "
                         f"(its methods: {', '.join(names)})")
    for name in names:
        settings_for(get_method(name), settings)
    root = results_root(prof, results_dir, data)
    check_writable(root)
    runs = bench_runs(names, seeds)
    n_jobs, threads = bench_jobs(prof, jobs, len(runs))
    since = float(os.environ.get(_BENCH_STARTED, time.time()))
    launch(prof)
    lead = rank() == 0
    if lead:
        print(f"[gfnbench] runs and tables go to {root}")
    kwargs = dict(task=task, profile=profile, seeds=list(seeds), methods=methods, results_dir=results_dir,
                  model=model, overwrite=overwrite, data=data, settings=settings, compute=compute,
                  save_adapters=save_adapters)
    helpers = BenchHelpers(kwargs, n_jobs - 1, threads, root / "runs" / task_obj.name, since) if lead else None
    with helpers if helpers is not None else contextlib.nullcontext():
        claims = locks.claim(root, task_obj.name, runs, overwrite, since) if lead else ()
        for name, seed in follow_lead(claims):
            t0 = time.time()
            out = run(task_obj.name, name, seed, profile, str(root), model, overwrite, data,
                      {name: (settings or {}).get(name) or {}}, resume=True,    # an interrupted run continues
                      compute=compute, save_adapters=save_adapters)
            if lead:
                print(f"[gfnbench] {task_obj.name}/{name}/seed{seed} done in {time.time() - t0:.1f}s -> {out}")
    if not lead or not tables:
        return []
    write_bench_log(root / "runs" / task_obj.name, since, n_jobs, threads, runs, helpers.ran)
    return write_leaderboard(root, task_obj.name, method_order=names)


def bench_runs(names: list[str], seeds) -> list[tuple[str, int]]:
    """Every (method, seed) of a bench, training methods first: the longest runs start first, so parallel jobs
    end together instead of one job finishing a long run alone."""
    runs = [(name, seed) for name in names for seed in seeds_for(get_method(name), seeds)]
    return sorted(runs, key=lambda r: not get_method(r[0]).trains)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


def bench_jobs(prof: Profile, jobs: int | None, n_runs: int) -> tuple[int, int]:
    """(processes, torch threads each) for a bench. `jobs` given wins; else the profile's `bench_jobs`, where
    None means one job per core up to 4 on a one-device CPU run: on 2 cores two 1-thread runs did 1.45x the
    work of one 2-thread run (an arith evaluation batch: 13.0 s at 1 thread, 9.5 s at 2)."""
    cores = usable_cores()
    if jobs is None:
        jobs = prof.bench_jobs
    if jobs is None:
        jobs = min(4, cores) if prof.accelerator == "cpu" and prof.devices == 1 else 1
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if jobs > 1 and prof.devices > 1:
        raise ValueError("--jobs > 1 runs several benches side by side; with --devices > 1 use --jobs 1")
    jobs = max(1, min(jobs, n_runs))
    return jobs, max(1, cores // jobs)


_BENCH_STARTED = "GFNBENCH_BENCH_STARTED"


def _bench_job(kwargs: dict, threads: int, log: str) -> None:
    """One helper job of a bench (a fresh process): its output goes to its log, its runs to the shared folder."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(threads)
    bench(**kwargs, jobs=1, tables=False)


class BenchJobFailed(RuntimeError):
    """One of a bench's extra jobs exited with an error (what it said is in its log)."""


class BenchHelpers:
    """The extra jobs of a bench, started as fresh processes (spawn) with `threads` torch threads each, their
    output in <runs>/bench-job<k>.log. Leaving the block waits for them; a failed job is one error naming its
    log (its unfinished run was already picked up by the waiting jobs, see locks.claim)."""

    def __init__(self, kwargs: dict, n: int, threads: int, runs_dir: Path, since: float):
        self.kwargs, self.n, self.threads, self.runs_dir, self.since = kwargs, n, threads, runs_dir, since
        self.procs, self.logs, self.ran = [], [], []
        self.saved_threads = torch.get_num_threads()

    def __enter__(self):
        import multiprocessing

        if self.n == 0:         # one job: the process's own threads (its caller's choice) stay
            return self
        torch.set_num_threads(self.threads)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        ctx = multiprocessing.get_context("spawn")
        env = {"OMP_NUM_THREADS": str(self.threads), _BENCH_STARTED: repr(self.since)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            for k in range(1, self.n + 1):
                log = self.runs_dir / f"bench-job{k}.log"
                proc = ctx.Process(target=_bench_job, args=(self.kwargs, self.threads, str(log)), daemon=False)
                proc.start()
                self.procs.append(proc)
                self.logs.append(log)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        print(f"[gfnbench] {self.n + 1} jobs x {self.threads} torch thread(s); the other jobs log to "
              f"{', '.join(map(str, self.logs))}")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is not None:
                for proc in self.procs:
                    proc.terminate()
            for proc in self.procs:
                proc.join()
        finally:
            torch.set_num_threads(self.saved_threads)
        failed = [str(log) for proc, log in zip(self.procs, self.logs) if proc.exitcode != 0]
        if exc_type is None and failed:
            raise BenchJobFailed(f"a bench job failed: its output is in {', '.join(failed)}; the runs it finished "
                                 f"are kept, and the same bench command continues from them")
        self.ran = ran_since(self.runs_dir, self.since)
        return False


def ran_since(runs_dir: Path, since: float) -> list[list]:
    """[method, seed] of every run whose record was written since `since` (what a bench's jobs made)."""
    from gfnbench.records import RECORD

    return [[p.parent.parent.name, int(p.parent.name.removeprefix("seed"))]
            for p in sorted(runs_dir.glob(f"*/seed*/{RECORD}"))
            if p.parent.name.removeprefix("seed").lstrip("-").isdigit() and p.stat().st_mtime >= since]


def write_bench_log(runs_dir: Path, since: float, jobs: int, threads: int, runs: list, ran: list) -> None:
    """<runs>/bench.json: what the last bench ran and how long it took from start to table (the wall time a
    user waits, which the table header states), beside the runs it ran."""
    ran = sorted({(m, s) for m, s in ran})
    log = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
           "wall_time_s": time.time() - since, "jobs": jobs, "torch_threads_per_job": threads,
           "cores": usable_cores(), "runs": [list(r) for r in runs], "ran": [list(r) for r in ran],
           "git_commit": git_commit()}
    atomic_write_text(runs_dir / BENCH_LOG, json.dumps(log, indent=1))
    print(f"[gfnbench] bench: {len(ran)} run(s) in {log['wall_time_s'] / 60:.1f} min of wall time, {jobs} job(s) x "
          f"{threads} torch thread(s)")


def follow_lead(items):
    """Process 0's items (its claimed runs) in every process, one at a time as process 0 takes them (a lock is
    held only while its run runs); the identity with one process."""
    if world_size() == 1:
        yield from items
        return
    if rank() == 0:
        for item in items:
            broadcast(item)
            yield item
        broadcast(None)
        return
    while (item := broadcast(None)) is not None:
        yield item
