"""Run records: one folder per (task, method, seed), written atomically and never silently overwritten.

record.json keys: task, method, seed, profile, model (policy model id), scoring_model (who scored the
log-likelihood), data (data source), metrics {split: {metric: float}}, config, versions, git_commit,
wall_time_s, created, and optionally train_curve. samples.jsonl holds every evaluation sample.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

REQUIRED = ("task", "method", "seed", "profile", "model", "scoring_model", "data", "metrics", "config",
            "versions", "git_commit", "wall_time_s")
PACKAGES = ("torch", "transformers", "peft", "lightning", "torchmetrics", "pandas", "sacrebleu", "bert-score",
            "evaluate", "gfnbench")


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(repo_dir: str | Path | None = None) -> str:
    """HEAD, with -dirty when tracked files differ from it (the numbers may not match the commit)."""
    cwd = str(repo_dir or Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_dir(results_dir: str | Path, task: str, method: str, seed: int) -> Path:
    return Path(results_dir) / "runs" / task / method / f"seed{seed}"


def check_writable(results_dir: str | Path) -> None:
    path = Path(results_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise PermissionError(f"results directory {path} is not writable ({err.strerror}): "
                              f"pass --results_dir <a writable folder>") from err


def atomic_write_text(path: str | Path, text: str) -> None:
    """Temp file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate_record(record: dict) -> None:
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"run record lacks {missing}")
    if not isinstance(record["seed"], int) or isinstance(record["seed"], bool):
        raise ValueError(f"seed must be an integer, got {record['seed']!r}")
    for split, values in record["metrics"].items():
        for name, value in values.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"metric {name} on split {split} is {value!r}: results must be finite numbers")


def write_run(out_dir: str | Path, record: dict, samples: list[dict], overwrite: bool = False) -> Path:
    """samples.jsonl and config.json first, record.json last: a record exists only for a complete run."""
    out = Path(out_dir)
    if (out / "record.json").exists() and not overwrite:
        raise FileExistsError(f"{out / 'record.json'} exists: pass --overwrite true or delete {out}")
    record = {**record, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    validate_record(record)
    samples_text = "".join(json.dumps(s, sort_keys=True) + "\n" for s in samples)
    record_text = json.dumps(record, indent=2, sort_keys=True)
    config_text = json.dumps(record["config"], indent=2, sort_keys=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "samples.jsonl", samples_text)
    atomic_write_text(out / "config.json", config_text)
    atomic_write_text(out / "record.json", record_text)
    return out


def read_runs(results_dir: str | Path, task: str) -> list[dict]:
    root = Path(results_dir) / "runs" / task
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/seed*/record.json"))]
