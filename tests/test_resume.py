"""Resumable runs: kill -9 a smoke run mid-training (GFlowNet, PPO), rerun it, get the uninterrupted run's record
and training log; a checkpoint of other settings, a damaged one or --resume false restarts, saying so in one line;
a row that cannot resume (SFT) says so."""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gfnbench.records import read_samples

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def gfnbench(results: Path, *extra: str, method: str = "gflownet") -> list[str]:
    return [sys.executable, "-m", "gfnbench.cli", "run", "--task", "rng", "--method", method, "--profile",
            "smoke", "--seed", "3", "--results_dir", str(results), "--checkpoint_every", "1", *extra]


def kill_after_checkpoints(cmd: list[str], checkpoint: Path, writes: int) -> None:
    """Start `cmd`, watch `checkpoint` being replaced, SIGKILL the process after its `writes`-th version."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, last = 0, None
    deadline = time.time() + 300
    while seen < writes and time.time() < deadline and proc.poll() is None:
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen == writes, f"saw {seen} checkpoints before the run ended or timed out"


def outcome(run: Path) -> tuple[dict, list, list]:
    record = json.loads((run / "record.json").read_text())
    return record["metrics"], read_samples(run), record["train_curve"]


def training_log(run: Path) -> list[dict]:
    """train/metrics.csv without its timing columns (wall-clock seconds differ between any two runs)."""
    with open(run / "train" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in row.items() if not k.endswith("_time_s")} for row in rows]


@pytest.mark.parametrize("method", ["gflownet", "ppo"])
def test_killed_run_resumes_to_the_uninterrupted_record(tmp_path, method):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(gfnbench(whole, method=method), cwd=REPO, env=ENV, check=True, capture_output=True)
    run = broken / "runs" / "rng" / method / "seed3"
    kill_after_checkpoints(gfnbench(broken, method=method), run / "checkpoints" / "last.ckpt",
                           random.Random().randint(2, 8))
    assert not (run / "record.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    resumed = subprocess.run(gfnbench(broken, method=method), cwd=REPO, env=ENV, check=True,   # a plain rerun
                             capture_output=True, text=True)
    said = resumed.stdout + resumed.stderr
    assert "Restored all states from the checkpoint" in said and "resuming the interrupted run from" in said
    assert outcome(run) == outcome(whole / "runs" / "rng" / method / "seed3")
    log, whole_log = training_log(run), training_log(whole / "runs" / "rng" / method / "seed3")
    assert log == whole_log and len(log) >= 18 and [r["step"] for r in log] == sorted({r["step"] for r in log}, key=int)
    assert not (run / "checkpoints").exists()          # removed once the record is written


def test_a_checkpoint_of_other_settings_or_resume_false_restarts_and_says_so(tmp_path):
    run = tmp_path / "runs" / "rng" / "gflownet" / "seed3"
    first = gfnbench(tmp_path, "--gflownet.lr", "0.002")
    kill_after_checkpoints(first, run / "checkpoints" / "last.ckpt", 2)
    other = subprocess.run(gfnbench(tmp_path, "--keep_checkpoints", "true"), cwd=REPO, env=ENV, check=True,
                           capture_output=True, text=True)
    assert "was written by a run with other settings (settings): removed; training starts from step 0" in other.stdout
    assert "Restored all states" not in other.stdout + other.stderr
    assert "exists and is not empty" not in other.stderr        # the killed run's log went, not Lightning's warning
    again = subprocess.run(gfnbench(tmp_path, "--overwrite", "true", "--resume", "false"), cwd=REPO, env=ENV,
                           check=True, capture_output=True, text=True)
    assert "--resume false: removed" in again.stdout and "Restored all states" not in again.stdout + again.stderr


def test_a_row_that_cannot_resume_says_it_restarts(tmp_path, capsys):
    from gfnbench.cli import main

    run = tmp_path / "runs" / "rng" / "sft" / "seed0"
    (run / "train").mkdir(parents=True)
    (run / "train" / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.5\n")    # what a killed run leaves
    main(["run", "--task", "rng", "--method", "sft", "--profile", "smoke", "--results_dir", str(tmp_path)])
    assert "sft does not checkpoint its training (see checkpoints.py): the interrupted run" in capsys.readouterr().out
    assert not (run / "checkpoints").exists() and (run / "record.json").is_file()


def test_a_checkpoint_resumes_only_with_as_many_processes(tmp_path):
    from gfnbench.checkpoints import ResumableModule

    module = ResumableModule()
    with pytest.raises(ValueError, match="resume with --devices 2"):
        module.on_load_checkpoint({"process_states": [{}, {}]})
