"""One lock per run folder, so concurrent benches on one results folder never lose or duplicate a run.

The lock is an `fcntl.flock` on `<run folder>/.lock`. The kernel drops it when its holder exits, however it
exits (kill -9 included), so a lock file left behind by a dead process is stale and simply taken over. A
process re-entering a lock it holds (bench -> run) gets it at once. Released locks remove their file (and the
run folder, when the run left nothing else there), re-checking after each acquire that the file is still the
one locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = ".lock"
_HELD: dict[str, RunLock] = {}


class RunInProgress(RuntimeError):
    """Another process holds this run's lock."""


class RunLock:
    def __init__(self, run_dir: Path, fd: int | None, reentrant: bool = False):
        self.run_dir, self.fd, self.reentrant = Path(run_dir), fd, reentrant

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_NAME

    def release(self) -> None:
        if self.reentrant or self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD.pop(str(self.run_dir.resolve()), None)
        try:
            self.path.unlink(missing_ok=True)      # while still locked: waiters notice the inode change
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()                # only when empty (a run that wrote nothing)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.release()


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        return "another process"
    return f"process {pid}" if pid else "another process"


def acquire(run_dir: str | Path, wait: bool = False) -> RunLock:
    """Lock a run folder (created if needed). Raises RunInProgress when another process holds it and not
    `wait`; with `wait`, blocks until it is free. A failure after the lock file was made (a full disk refusing
    the holder's pid) removes the file and the folder again, so nothing is left holding only `.lock`."""
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        return RunLock(run_dir, None, reentrant=True)
    path = run_dir / LOCK_NAME
    while True:
        fd = _open_lock_file(run_dir)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise RunInProgress(f"{run_dir} is being run by {_holder(path)}") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:                               # the holder removed the file as we waited: lock the new one
            os.close(fd)
            continue
        lock = RunLock(run_dir, fd)
        _HELD[key] = lock
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except BaseException:
            lock.release()                         # removes the file, and the folder when it holds nothing else
            raise
        return lock


def _open_lock_file(run_dir: Path, tries: int = 5) -> int:
    """Open (creating it and its folder) a run folder's lock file. A run that failed in a neighbouring folder may
    remove the empty parents between our mkdir and open: then make them again."""
    for _ in range(tries - 1):
        run_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            return os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    run_dir.mkdir(parents=True, exist_ok=True)
    return os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)


def try_acquire(run_dir: str | Path) -> RunLock | None:
    try:
        return acquire(run_dir, wait=False)
    except RunInProgress:
        return None


def claim(results_root: str | Path, task: str, runs, overwrite: bool = False, since: float | None = None):
    """The (method, seed) runs this process should run now, each yielded while its lock is held: runs with a
    record are kept (unless `overwrite`: then only records written since `since`, the bench's start, count,
    so a parallel job's fresh run is not run twice), runs another process has in progress are skipped and,
    after all the others, waited for; one that process left unfinished is then run here."""
    from gfnbench.records import RECORD, run_dir

    def done(method, seed) -> bool:
        record = run_dir(results_root, task, method, seed) / RECORD
        if not record.exists():
            return False
        return not overwrite or (since is not None and record.stat().st_mtime >= since)

    waiting = []
    for method, seed in runs:
        name = f"{task}/{method}/seed{seed}"
        if done(method, seed):
            print(f"[gfnbench] keeping existing run {name}")
            continue
        lock = try_acquire(run_dir(results_root, task, method, seed))
        if lock is None:
            print(f"[gfnbench] {name} is in progress in "
                  f"{_holder(run_dir(results_root, task, method, seed) / LOCK_NAME)}: skipping it for now")
            waiting.append((method, seed))
            continue
        with lock:
            if done(method, seed):    # finished by another process between the check and the lock
                print(f"[gfnbench] keeping existing run {name} (finished by another process)")
                continue
            yield method, seed
    for method, seed in waiting:
        name = f"{task}/{method}/seed{seed}"
        print(f"[gfnbench] waiting for {name} (in progress in another process)")
        t0 = time.time()
        with acquire(run_dir(results_root, task, method, seed), wait=True):
            if done(method, seed):
                print(f"[gfnbench] {name} finished by the other process ({time.time() - t0:.0f}s wait): keeping it")
                continue
            print(f"[gfnbench] {name} was left unfinished by the other process: running it")
            yield method, seed
