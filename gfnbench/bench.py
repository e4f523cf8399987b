"""A bench: every method x seed of one task, scheduled over jobs and processes, then its tables.

`check_bench` (preflight) checks every input once and makes the plan; each run is then handed its own plan. The
records already there are checked too, before any run: the table reads them all. bench.json, what the bench ran,
is written only once its table is.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch

from gfnbench import locks
from gfnbench.devices import broadcast, launch, rank, world_size
from gfnbench.methods import MethodSpec
from gfnbench.preflight import check_bench
from gfnbench.profiles import Profile
from gfnbench.records import (
    BENCH_LOG,
    RECORD,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    git_commit,
    record_problem,
)
from gfnbench.runner import run_plan


def bench(task: str, profile: str | Profile = "cpu", seeds: list[int] = (0, 1, 2), methods: list[str] | None = None,
          results_dir: str | None = None, model: str | None = None, overwrite: bool = False,
          data: str | None = None, settings: dict | None = None, compute: dict | None = None,
          save_adapters: bool = True, jobs: int | None = None, tables: bool = True) -> list[Path]:
    """Every method registered for the task x seeds (runs that already have a record are kept), then tables.
    With several processes (--devices N) they are started once, and all follow process 0's list of runs.
    With `jobs` > 1 (the cpu profile: one per core, up to 4) that many processes share the list through the
    run locks, each with its share of the cores' torch threads; the table comes when all are done. Before each
    run process 0 says "run k of N" and the time left, from the runs finished so far (`progress_line`)."""
    from gfnbench.leaderboard import write_leaderboard
    from gfnbench.paired import write_standing_comparisons

    # every seed, method and setting, before any run
    plan = check_bench(task, profile, seeds, methods, results_dir, model, data, settings=settings, compute=compute)
    name, runs = plan.task.name, bench_runs(plan.methods, plan.seeds)
    check_existing_records(plan.root / "runs" / name, set(runs) if overwrite else set())
    root = check_writable(plan.root)
    n_jobs, threads = bench_jobs(plan.profile, jobs, len(runs))
    since = float(os.environ.get(_BENCH_STARTED, time.time()))
    launch(plan.profile)
    lead = rank() == 0
    if lead:
        print(f"[gfnbench] runs and tables go to {root}")
    kwargs = dict(task=task, profile=plan.profile, seeds=list(seeds), methods=methods, results_dir=results_dir,
                  model=model, overwrite=overwrite, data=data, settings=settings, compute=compute,
                  save_adapters=save_adapters)
    helpers = BenchHelpers(kwargs, n_jobs - 1, threads, root / "runs" / name, since) if lead else None
    with helpers if helpers is not None else contextlib.nullcontext():
        claims = locks.claim(root, name, runs, overwrite, since) if lead else ()
        specs = {spec.name: spec for spec in plan.methods}
        total = len(runs_to_do(root, name, runs, overwrite, since)) if lead else 0
        for method, seed in follow_lead(claims):
            if lead:
                finished = len(ran_since(root / "runs" / name, since))
                print(progress_line(f"{name}/{method}/seed{seed}", finished, total, time.time() - since))
            t0 = time.time()
            out = run_plan(plan.for_run(specs[method], seed), overwrite=overwrite,
                           resume=True, save_adapters=save_adapters)    # an interrupted run continues
            if lead:
                print(f"[gfnbench] {name}/{method}/seed{seed} done in {time.time() - t0:.1f}s -> {out}")
    if not lead or not tables:
        return []
    log = root / "runs" / name / BENCH_LOG
    previous = log.read_bytes() if log.is_file() else None
    if helpers.ran or previous is None:     # a bench that ran nothing keeps the log of the one that made the table
        write_bench_log(root / "runs" / name, since, n_jobs, threads, runs, helpers.ran)
    else:
        print("[gfnbench] bench: every run was there already; the table keeps the wall time of the bench that ran them")
    try:
        written = write_leaderboard(root, name, method_order=plan.names)
    except BaseException:           # no table: the previous bench.json stays the one that matches the table
        if previous is None:
            log.unlink(missing_ok=True)
        else:
            atomic_write_bytes(log, previous)
        raise
    return written + write_standing_comparisons(root, name, plan.task.paired_comparisons, plan.names)


def runs_to_do(root: Path, task: str, runs: list[tuple[str, int]], overwrite: bool, since: float) -> list:
    """The bench's runs that have no record yet (with --overwrite: none written since the bench started), as
    locks.claim decides, counted once at the start: the N of "run k of N"."""
    from gfnbench.records import run_dir

    def done(method, seed) -> bool:
        record = run_dir(root, task, method, seed) / RECORD
        return record.exists() and (not overwrite or record.stat().st_mtime >= since)

    return [run for run in runs if not done(*run)]


def eta_seconds(elapsed: float, finished: int, total: int) -> float | None:
    """Seconds until the bench's `total` runs are done, at the pace of the `finished` ones so far (`elapsed`
    seconds since it started, in all jobs together, model loads included); None before the first finishes."""
    if finished <= 0:
        return None
    return elapsed / finished * max(0, total - finished)


def duration(seconds: float) -> str:
    """'45 s', '17 min' or '2.3 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def progress_line(run: str, finished: int, total: int, elapsed: float) -> str:
    """'[gfnbench] run 3 of 8: rng/gflownet/seed1; about 25 min left (from 2 finished runs)': k counts the
    runs every job has finished, plus this one."""
    k = min(finished + 1, max(total, 1))
    eta = eta_seconds(elapsed, finished, total)
    left = ("time left known once a run finishes" if eta is None else
            f"about {duration(eta)} left (from {finished} finished run{'s' if finished != 1 else ''})")
    return f"[gfnbench] run {k} of {total}: {run}; {left}"


def check_existing_records(runs_dir: Path, replaced: set[tuple[str, int]]) -> None:
    """Every record the bench's table will read (all of the task's but those `replaced` by --overwrite) must be
    sound before any run starts: a damaged one (`{}`, truncated) is named in one line, never kept as a finished
    run and then refused by the table after the bench's work."""
    for path in sorted(runs_dir.glob(f"*/seed*/{RECORD}")):
        seed = path.parent.name.removeprefix("seed")
        if seed.isdigit() and (path.parent.parent.name, int(seed)) in replaced:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}): fix or delete that run folder") from err
        problem = record_problem(record, path)
        if problem:
            raise ValueError(problem)


def seeds_for(spec: MethodSpec, seeds) -> list[int]:
    """A deterministic method (greedy, beam) gives the same record for every seed: it runs the first only."""
    return list(seeds[:1]) if spec.deterministic else list(seeds)


def bench_runs(specs: list[MethodSpec], seeds) -> list[tuple[str, int]]:
    """Every (method, seed) of a bench, training methods first: the longest runs start first, so parallel jobs
    end together instead of one job finishing a long run alone."""
    runs = [(spec, seed) for spec in specs for seed in seeds_for(spec, seeds)]
    return [(spec.name, seed) for spec, seed in sorted(runs, key=lambda r: not r[0].trains)]


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
