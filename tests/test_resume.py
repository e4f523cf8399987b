"""Resumable runs: kill -9 a smoke run mid-training (GFlowNet, PPO), resume it, get the uninterrupted run's record;
a row that cannot resume (SFT) says so."""
from __future__ import annotations

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


@pytest.mark.parametrize("method", ["gflownet", "ppo"])
def test_killed_run_resumes_to_the_uninterrupted_record(tmp_path, method):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(gfnbench(whole, method=method), cwd=REPO, env=ENV, check=True, capture_output=True)
    run = broken / "runs" / "rng" / method / "seed3"
    kill_after_checkpoints(gfnbench(broken, method=method), run / "checkpoints" / "last.ckpt",
                           random.Random().randint(2, 8))
    assert not (run / "record.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    resumed = subprocess.run(gfnbench(broken, "--resume", "true", method=method), cwd=REPO, env=ENV, check=True,
                             capture_output=True, text=True)
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr   # not a fresh start
    assert outcome(run) == outcome(whole / "runs" / "rng" / method / "seed3")
    assert not (run / "checkpoints").exists()          # removed once the record is written


def test_a_row_that_cannot_resume_says_it_restarts(tmp_path, capsys):
    from gfnbench.cli import main

    main(["run", "--task", "rng", "--method", "sft", "--profile", "smoke", "--results_dir", str(tmp_path),
          "--resume", "true"])
    assert "sft does not checkpoint its training" in capsys.readouterr().out
    assert not (tmp_path / "runs" / "rng" / "sft" / "seed0" / "checkpoints").exists()


def test_a_checkpoint_resumes_only_with_as_many_processes(tmp_path):
    from gfnbench.checkpoints import ResumableModule

    module = ResumableModule()
    with pytest.raises(ValueError, match="resume with --devices 2"):
        module.on_load_checkpoint({"process_states": [{}, {}]})
