"""Every bad input and fault: checked before any work, answered in one line, never a mixed or lost result.

The table runs each bad invocation through `gfnbench.cli.main` in-process and asserts exit code 2, exactly one
stderr line (`gfnbench: error: ...`, with the expected words), no traceback and no new file or folder. Then: a
full disk while writing a table (the old table survives whole), a damaged embedded-model cache (rebuilt once),
run locks (stale after their process dies) and two concurrent benches on one folder (every run done once).
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gfnbench.cli import main

REPO = Path(__file__).resolve().parent.parent


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --------------------------------------------------------------------------- inputs the table refers to

def make_inputs(root: Path) -> dict[str, str]:
    """Bad files and folders under root/in; runs go to root/out (which must stay absent)."""
    d = root / "in"
    d.mkdir()
    (d / "empty.txt").write_text("")
    (d / "utf16.txt").write_text("The cat sat.\nA dog ran.\nIt rained.\n", encoding="utf-16")
    (d / "bad.jsonl").write_text('{"prompt": "The cat sat."}\n{"prompt": \n')
    (d / "no_s5.csv").write_text("storyid,storytitle,sentence1,sentence2,sentence3,sentence4\n"
                                 "a,t,One.,Two.,Three.,Four.\n")
    long = " ".join(["word"] * 10_000)
    ok = ["The cat sat on the mat.", "A dog ran home.", "It was a good day.", "She was happy.", "He left."]
    (d / "long_first.txt").write_text("\n".join([long] + ok) + "\n")
    (d / "long_last.txt").write_text("\n".join(ok + [long]) + "\n")
    (d / "subj_one").mkdir()
    (d / "subj_one" / "plot.tok.gt9.5000").write_text("a plot sentence .\n")
    (d / "folder").mkdir()
    (d / "blocker").write_text("a file where a folder should be")
    (d / "syntax.py").write_text("from gfnbench.tasks import register_task\n\ndef broken(:\n    pass\n")
    (d / "missing_import.py").write_text("import json\nimport no_such_module_for_gfnbench\n")
    (d / "no_task.py").write_text("X = 1\n")
    (d / "raises.py").write_text("x = 1\nraise RuntimeError('boom at import')\n")
    (d / "bad_method.py").write_text("def f(:\n")
    (d / "nan_reward.py").write_text(NAN_REWARD_TASK)
    (d / "not_a_model").mkdir()
    (d / "no_weights").mkdir()
    (d / "no_weights" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32,
         "num_attention_heads": 2, "num_hidden_layers": 1, "num_key_value_heads": 2, "vocab_size": 64}))
    runs = root / "records" / "runs" / "arith" / "greedy"
    (runs / "seed0").mkdir(parents=True)
    (runs / "seed0" / "record.json").write_text("{}")
    trunc = root / "truncated" / "runs" / "arith" / "greedy" / "seed0"
    trunc.mkdir(parents=True)
    (trunc / "record.json").write_text('{"task": "arith", "meth')
    (root / "norecords").mkdir()
    return {k: str(v) for k, v in {"in": d, "out": root / "out", "records": root / "records",
                                   "truncated": root / "truncated", "norecords": root / "norecords"}.items()}


NAN_REWARD_TASK = textwrap.dedent("""
    import torch
    from gfnbench.tasks.base import Example, Task, register_task

    @register_task("nan_reward")
    class NanReward(Task):
        description = "a task file whose reward is NaN"
        data_source = "synthetic"
        min_len, max_len, eval_max_len = 1, 3, 3
        eval_samples = 2
        metric_directions = {"exact": "higher"}

        def examples(self, split):
            return [Example(id=f"{split}{i}", question="1", answer="1") for i in range(3)]

        def prompt(self, ex):
            return "Say 1:"

        def log_reward(self, model, tokenizer, traj, examples):
            return torch.full(traj.state_ends().shape, float("nan"))

        def score(self, texts, ex):
            return {"exact": 0.0}
""")

RUN = ["run", "--profile", "smoke"]
BENCH = ["bench", "--profile", "smoke"]

# (id, argv with {in}/{out}/... placeholders, words the one error line must hold)
CASES = [
    ("unknown task", RUN + ["--task", "nosuchtask", "--method", "greedy"], "unknown task 'nosuchtask'; known tasks:"),
    ("unknown method", RUN + ["--task", "arith", "--method", "nope"], "unknown method 'nope'"),
    ("unknown profile", ["run", "--task", "arith", "--method", "greedy", "--profile", "huge"], "unknown profile"),
    ("method not for task", RUN + ["--task", "rng", "--method", "beam"], "does not apply to task 'rng'"),
    ("seed not an integer", RUN + ["--task", "arith", "--method", "greedy", "--seed", "abc"], "--seed: expected int"),
    ("seed a float", RUN + ["--task", "arith", "--method", "greedy", "--seed", "1.5"], "--seed"),
    ("negative seed", RUN + ["--task", "arith", "--method", "greedy", "--seed", "-1"], "non-negative integer"),
    ("unknown option", RUN + ["--task", "arith", "--method", "greedy", "--bogus", "1"], "unrecognized arguments"),
    ("missing task", ["run", "--method", "greedy"], "task"),
    ("settings on a method without any", RUN + ["--task", "arith", "--method", "greedy", "--greedy.bogus", "1"],
     "method greedy takes no settings"),
    ("unknown setting", RUN + ["--task", "rng", "--method", "gflownet", "--gflownet.bogus", "1"],
     "gflownet has no setting 'bogus'; its settings: loss, lam, lr"),
    ("setting of the wrong type", RUN + ["--task", "rng", "--method", "gflownet", "--gflownet.lora_rank",
                                         "sixty-four"], "gflownet setting lora_rank='sixty-four': expected an integer"),
    ("setting refused by the method", RUN + ["--task", "rng", "--method", "gflownet", "--gflownet.loss", "db"],
     "GFlowNet loss must be 'subtb' or 'tb'"),
    ("settings for another method", RUN + ["--task", "rng", "--method", "gflownet", "--ppo.lr", "1"],
     "settings given for ppo, but this run is gflownet"),
    ("bench settings for a method it does not run", BENCH + ["--task", "rng", "--methods", "[greedy]",
                                                              "--ppo.lr", "1"], "which this bench does not run"),
    ("setting without a value", RUN + ["--task", "rng", "--method", "gflownet", "--gflownet.lr"], "needs a value"),
    ("a count of 0", RUN + ["--task", "rng", "--method", "gflownet", "--gflownet.samples_per_prompt", "0"],
     "gflownet settings: samples_per_prompt must be >= 1, got 0"),
    ("negative reward temperatures", RUN + ["--task", "rng", "--method", "gflownet",
                                            "--gflownet.reward_temperature", "[-1,-1,0]"],
     "gflownet settings: reward_temperature must be [start > 0, end > 0, steps >= 0], got [-1.0, -1.0, 0]"),
    ("a tempered range below 0", RUN + ["--task", "rng", "--method", "gflownet", "--gflownet.tempered_range", "[-1,2]"],
     "gflownet settings: tempered_range must be [low, high] with 0 < low <= high, got [-1.0, 2.0]"),
    ("a probability above 1", RUN + ["--task", "rng", "--method", "ppo", "--ppo.gamma", "1.5"],
     "ppo settings: gamma must be in [0, 1], got 1.5"),
    ("an M-step count of 0", RUN + ["--task", "subj", "--method", "gflownet_mstep",
                                    "--gflownet_mstep.mstep.batch_size", "0"],
     "gflownet_mstep.mstep settings: batch_size must be >= 1, got 0"),
    ("bench negative seed", BENCH + ["--task", "arith", "--seeds", "[0,-1]"], "got -1"),
    ("bench repeated seed", BENCH + ["--task", "arith", "--seeds", "[0,0]"], "seed 0 is listed twice"),
    ("bench seeds not a list", BENCH + ["--task", "arith", "--seeds", "abc"], "--seeds"),
    ("bench method not for task", BENCH + ["--task", "rng", "--methods", "[greedy,beam]"], "'beam' does not apply"),
    ("bench unknown method", BENCH + ["--task", "arith", "--methods", "[greedy,nope]"], "unknown method 'nope'"),
    ("bench no methods", BENCH + ["--task", "arith", "--methods", "[]"], "no methods given"),
    ("results dir under a file", RUN + ["--task", "arith", "--method", "greedy",
                                        "--results_dir", "{in}/blocker/sub"], "not writable"),
    ("data does not exist", RUN + ["--task", "continuation", "--method", "greedy", "--data", "{in}/nope.txt"],
     "does not exist"),
    ("data a folder, file expected", RUN + ["--task", "continuation", "--method", "greedy", "--data", "{in}/folder"],
     "is a folder; task continuation expects a file"),
    ("infill data a folder", BENCH + ["--task", "infill", "--data", "{in}/folder"],
     "is a folder; task infill expects a file"),
    ("data a file, folder expected", RUN + ["--task", "subj", "--method", "temperature", "--data", "{in}/empty.txt"],
     "is a file; task subj expects a folder"),
    ("data for a task without data", RUN + ["--task", "arith", "--method", "greedy", "--data", "{in}/empty.txt"],
     "does not read a data file"),
    ("empty data file", RUN + ["--task", "continuation", "--method", "greedy", "--data", "{in}/empty.txt"],
     "no prompts"),
    ("UTF-16 data file", RUN + ["--task", "continuation", "--method", "greedy", "--data", "{in}/utf16.txt"],
     "not UTF-8"),
    ("malformed JSONL", RUN + ["--task", "continuation", "--method", "greedy", "--data", "{in}/bad.jsonl"],
     "bad.jsonl, line 2: invalid JSON"),
    ("CSV without sentence5", RUN + ["--task", "infill", "--method", "greedy", "--data", "{in}/no_s5.csv"],
     "missing column sentence5"),
    ("SUBJ folder with one file", RUN + ["--task", "subj", "--method", "temperature", "--data", "{in}/subj_one"],
     "quote.tok.gt9.5000 is missing"),
    ("10,000-word prompt (line 1)", RUN + ["--task", "continuation", "--method", "greedy",
                                           "--data", "{in}/long_first.txt"], "long_first.txt, line 1: the prompt is"),
    ("10,000-word prompt (line 6)", BENCH + ["--task", "continuation", "--data", "{in}/long_last.txt"],
     "long_last.txt, line 6: the prompt is"),
    ("task file syntax error", RUN + ["--task", "{in}/syntax.py", "--method", "greedy"],
     "syntax.py:3: SyntaxError"),
    ("task file missing import", RUN + ["--task", "{in}/missing_import.py", "--method", "greedy"],
     "missing_import.py:2: ModuleNotFoundError"),
    ("task file raising", RUN + ["--task", "{in}/raises.py", "--method", "greedy"],
     "raises.py:2: RuntimeError: boom at import"),
    ("task file without a task", RUN + ["--task", "{in}/no_task.py", "--method", "greedy"],
     "must register exactly one task"),
    ("task file does not exist", RUN + ["--task", "{in}/nope.py", "--method", "greedy"], "does not exist"),
    ("method file syntax error", RUN + ["--task", "arith", "--method", "{in}/bad_method.py"], "bad_method.py"),
    ("model not in the offline cache", RUN + ["--task", "arith", "--method", "greedy", "--model", "gpt2"],
     "could not load model 'gpt2'"),
    ("model folder without a model", RUN + ["--task", "arith", "--method", "greedy", "--model", "{in}/not_a_model"],
     "could not load model"),
    ("model folder without weights", RUN + ["--task", "rng", "--method", "gflownet", "--model", "{in}/no_weights"],
     "could not load model"),
    ("bench over a {} record", BENCH + ["--task", "arith", "--methods", "[greedy]", "--results_dir", "{records}"],
     "seed0/record.json lacks task, method, seed"),
    ("bench over a truncated record", BENCH + ["--task", "arith", "--methods", "[temperature]",
                                               "--results_dir", "{truncated}"], "is not valid JSON"),
    ("leaderboard unknown task", ["leaderboard", "--task", "nosuchtask", "--results_dir", "{norecords}"],
     "unknown task 'nosuchtask'; known tasks:"),
    ("leaderboard without records", ["leaderboard", "--task", "arith", "--results_dir", "{norecords}"],
     "no run records"),
    ("leaderboard with a {} record", ["leaderboard", "--task", "arith", "--results_dir", "{records}"],
     "seed0/record.json lacks task, method, seed"),
    ("leaderboard with a truncated record", ["leaderboard", "--task", "arith", "--results_dir", "{truncated}"],
     "is not valid JSON"),
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_and_creates_nothing(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paths = make_inputs(tmp_path)
    argv = [a.format(**paths) for a in argv]
    if "--results_dir" not in argv and argv[0] != "leaderboard":
        argv += ["--results_dir", paths["out"]]
    before = tree(tmp_path)
    cwd_before = tree(REPO / "results") if (REPO / "results").exists() else set()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exc.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("gfnbench: error: ") and "Traceback" not in err
    assert words in lines[0], lines[0]
    assert tree(tmp_path) == before, "files were created"
    assert (tree(REPO / "results") if (REPO / "results").exists() else set()) == cwd_before


def test_the_table_has_at_least_30_rows():
    assert len(CASES) >= 30


def test_hub_with_network_allowed_but_unreachable_fails_fast(tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE=0 with no hub: one line saying what was tried, in seconds, not a minute of retries."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")    # nothing listens there
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    t0 = time.time()
    with pytest.raises(SystemExit) as exc:
        main(RUN + ["--task", "arith", "--method", "greedy", "--model", "no-org/no-such-model",
                    "--results_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert "unreachable" in err[0] and "tried 127.0.0.1:9" in err[0]
    assert time.time() - t0 < 10
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_in_a_model_folder_is_one_line(tmp_path, capsys, tiny):
    folder = tmp_path / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(RUN + ["--task", "arith", "--method", "greedy", "--model", str(folder),
                    "--results_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert f"{weights} is truncated" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_failure_after_the_model_loads_is_one_error_line_and_leaves_no_folder(tmp_path):
    """A task file's NaN reward fails at the first training step (Lightning logs its own lines on stderr first, so
    this runs as a subprocess): one error line, exit 2, and no run folder (nor the results folder it made)."""
    task = tmp_path / "nan_reward.py"
    task.write_text(NAN_REWARD_TASK)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gfnbench.cli", *RUN, "--task", str(task), "--method", "gflownet",
           "--results_dir", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("gfnbench: error: task nan_reward, step 0: log reward has")
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown task"):
        main(RUN + ["--task", "nosuchtask", "--method", "greedy", "--results_dir", str(tmp_path), "--debug"])


# --------------------------------------------------------------------------- writes: disk full, permission

def _records(root: Path, methods=("greedy", "temperature"), seeds=(0, 1)) -> None:
    from gfnbench.records import run_dir, write_run

    for m in methods:
        for s in seeds:
            write_run(run_dir(root, "arith", m, s), {
                "task": "arith", "method": m, "seed": s, "profile": "smoke", "model": "tiny",
                "scoring_model": "tiny", "data": "synthetic", "metrics": {"test": {"accuracy": 0.1 * s}},
                "config": {}, "versions": {}, "git_commit": "x", "wall_time_s": 1.0}, [])


@pytest.mark.parametrize("fail_at", [1, 3, 4])
def test_disk_full_while_writing_a_table_keeps_the_old_table_whole(tmp_path, capsys, monkeypatch, fail_at):
    import gfnbench.plots as plots
    import gfnbench.records as rec

    _records(tmp_path)
    main(["leaderboard", "--task", "arith", "--results_dir", str(tmp_path)])
    capsys.readouterr()
    table = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert {"arith.md", "arith.csv", "arith.tex", "arith.png"} <= set(table)
    _records(tmp_path, methods=("nucleus",))                 # the next table would differ

    real, calls = rec.atomic_write_bytes, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == fail_at:
            Path(path).write_bytes(data[: len(data) // 2])   # a partial file, as a full disk leaves one
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(rec, "atomic_write_bytes", full_disk)
    monkeypatch.setattr(plots, "atomic_write_bytes", full_disk)
    with pytest.raises(SystemExit) as exc:
        main(["leaderboard", "--task", "arith", "--results_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "disk full" in err[0], err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == table
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_disk_full_while_writing_a_run_leaves_no_partial_run(tmp_path, monkeypatch):
    import gfnbench.records as rec

    real, calls = rec.atomic_write_bytes, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(rec, "atomic_write_bytes", full_disk)
    with pytest.raises(rec.WriteFailed, match="disk full while writing .*record.json"):
        _records(tmp_path, methods=("greedy",), seeds=(0,))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_new_table_replaces_the_old_set_and_drops_its_stale_files(tmp_path, capsys):
    _records(tmp_path)
    (tmp_path / "arith_curves.png").write_bytes(b"old curves of a previous table")
    main(["leaderboard", "--task", "arith", "--results_dir", str(tmp_path)])
    assert not (tmp_path / "arith_curves.png").exists()      # the new set has no curves: the old one goes
    assert (tmp_path / "arith.png").read_bytes()[:4] == b"\x89PNG"


def _error_lines(err: str) -> list[str]:
    """The CLI's error lines (Lightning's own log lines share stderr when a run trains in-process)."""
    return [line for line in err.splitlines() if line.startswith("gfnbench: error:")]


def test_disk_full_at_the_start_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import gfnbench.locks as locks

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks.os, "write", full_disk)         # the lock file's pid: the first byte a run writes
    with pytest.raises(SystemExit) as exc:
        main(RUN + ["--task", "arith", "--method", "greedy", "--results_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "disk full" in err[0], err
    assert not (tmp_path / "out").exists()


def test_disk_full_mid_run_keeps_only_a_checkpoint_and_a_rerun_resumes_it(tmp_path, capsys, monkeypatch):
    import gfnbench.checkpoints as checkpoints

    real, calls = checkpoints.atomic_write_bytes, []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    argv = RUN + ["--task", "rng", "--method", "gflownet", "--results_dir", str(tmp_path), "--checkpoint_every", "1"]
    monkeypatch.setattr(checkpoints, "atomic_write_bytes", full_disk)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    errors = _error_lines(capsys.readouterr().err)
    assert exc.value.code == 2 and len(errors) == 1 and "disk full" in errors[0], errors
    run = tmp_path / "runs" / "rng" / "gflownet" / "seed0"
    assert tree(run) == {"checkpoints", "checkpoints/last.ckpt", "checkpoints/run.json"}   # the 2nd step's
    monkeypatch.setattr(checkpoints, "atomic_write_bytes", real)
    main(argv)
    assert "[gfnbench] resuming the interrupted run from" in capsys.readouterr().out
    assert (run / "record.json").is_file() and not (run / "checkpoints").exists()


def test_a_truncated_checkpoint_is_named_set_aside_and_the_bench_restarts_the_run(tmp_path, capsys):
    import shutil

    whole, broken = tmp_path / "whole", tmp_path / "broken"
    main(RUN + ["--task", "rng", "--method", "gflownet", "--results_dir", str(whole), "--checkpoint_every", "1",
                "--keep_checkpoints", "true"])
    run = broken / "runs" / "rng" / "gflownet" / "seed0"
    shutil.copytree(whole / "runs" / "rng" / "gflownet" / "seed0" / "checkpoints", run / "checkpoints")
    checkpoint = run / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])      # a kill mid-copy
    capsys.readouterr()
    main(BENCH + ["--task", "rng", "--methods", "[gflownet]", "--seeds", "[0]", "--results_dir", str(broken)])
    said = [line for line in capsys.readouterr().out.splitlines() if "last.ckpt" in line]
    assert said == [f"[gfnbench] {checkpoint} is damaged (not a readable torch checkpoint: File is not a zip file): "
                    f"set aside as last.ckpt.damaged; training starts from step 0"]
    assert (run / "checkpoints" / "last.ckpt.damaged").is_file() and not checkpoint.exists()
    record, fresh = (json.loads((r / "record.json").read_text()) for r in (run, whole / "runs/rng/gflownet/seed0"))
    assert record["metrics"] == fresh["metrics"] and record["train_curve"] == fresh["train_curve"]


# --------------------------------------------------------------------------- the embedded model's cache

def test_damaged_embedded_cache_is_rebuilt_once(tmp_path, monkeypatch, capsys, tiny):
    import gfnbench.models as models

    target = tmp_path / "cache"
    conversions = []

    def fake_convert(path):
        conversions.append(path)
        path.mkdir(parents=True)
        tiny.model.save_pretrained(path)
        tiny.tokenizer.save_pretrained(path)
        models.write_checksums(path)

    monkeypatch.setattr(models, "embedded_cache_dir", lambda: target)
    monkeypatch.setattr(models, "_convert_embedded", fake_convert)
    models.load_embedded()
    assert len(conversions) == 1
    models.load_embedded()
    assert len(conversions) == 1                                # a sound cache is reused
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])            # truncated
    lm = models.load_embedded()
    assert len(conversions) == 2 and lm.model is not None
    assert "damaged" in capsys.readouterr().out
    data = bytearray(weights.read_bytes())                      # same size, one byte flipped, newer mtime
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    models.load_embedded()
    assert len(conversions) == 3 and "sha256" in capsys.readouterr().out


# --------------------------------------------------------------------------- run locks

def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    from gfnbench import locks

    run = tmp_path / "runs" / "arith" / "greedy" / "seed0"
    run.mkdir(parents=True)
    (run / ".lock").write_text("999999")                        # its owner died (kill -9): no flock on it
    lock = locks.acquire(run)
    lock.release()
    assert not run.exists()                                     # nothing left of a run that wrote nothing


def test_a_run_held_by_another_process_is_refused_in_one_line(tmp_path, capsys):
    run = tmp_path / "runs" / "arith" / "greedy" / "seed0"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from gfnbench import locks
        lock = locks.acquire({str(run)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as exc:
            main(RUN + ["--task", "arith", "--method", "greedy", "--results_dir", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and f"is being run by process {holder.pid}" in err[0]
    finally:
        holder.kill()
        holder.wait()
    from gfnbench import locks

    locks.acquire(run).release()                               # stale once its owner is gone


def test_two_benches_on_one_folder_do_every_run_exactly_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GFNBENCH_TEST_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "gfnbench.cli", "bench", "--task", "arith", "--profile", "smoke",
           "--methods", "[temperature,zero_shot]", "--seeds", "[0,1]", "--results_dir", str(tmp_path)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    stdout = "".join(out for out, _ in outs)
    for method in ("temperature", "zero_shot"):     # (greedy is deterministic: bench runs it for one seed)
        for seed in (0, 1):
            assert stdout.count(f"arith/{method}/seed{seed} done in") == 1, stdout
            assert (tmp_path / "runs" / "arith" / method / f"seed{seed}" / "record.json").is_file()
    assert not list(tmp_path.rglob(".lock"))
    assert (tmp_path / "arith.md").is_file()
    records = [json.loads(p.read_text()) for p in tmp_path.rglob("record.json")]
    assert len(records) == 4


def test_data_kind_is_the_one_answer_to_whether_a_task_reads_data():
    """A task whose `data_kind` is None takes no data path; any other task's constructor takes `data`."""
    import inspect

    from gfnbench.tasks import TASKS, load_task_file

    load_task_file(str(REPO / "examples" / "sort_digits.py"))
    for name, cls in TASKS.items():
        takes_data = "data" in inspect.signature(cls.__init__).parameters
        assert takes_data == (cls.data_kind is not None), name
