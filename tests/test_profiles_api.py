"""Profiles as data (YAML files and flags), results folders keyed by what changes the numbers, the Python API, the
training loggers and the bench's progress line. Expected folders, names and numbers are written out by hand."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import gfnbench
from gfnbench.cli import main
from gfnbench.profiles import PROFILES, get_profile, resolve_profile
from gfnbench.records import data_fingerprint, results_root
from gfnbench.results_key import keyed, options_for, table_profile

REPO = Path(__file__).resolve().parent.parent


def one_error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def write_yaml(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# --------------------------------------------------------------------------- profiles as data

def test_a_profile_file_overrides_fields_of_its_base_and_is_named_after_them(tmp_path):
    prof = resolve_profile(write_yaml(tmp_path / "my.yaml", "base: smoke\ntrain_steps: 5\neval_questions: 2\n"
                                                            "logger: csv\nlearning_rate: '3e-4'\n"))
    smoke = PROFILES["smoke"]
    assert (prof.train_steps, prof.eval_questions, prof.learning_rate) == (5, 2, 3e-4)
    assert prof.name == "smoke (eval_questions 2, train_steps 5, learning_rate 0.0003)" and prof.base == "smoke"
    unchanged = ("model", "eval_samples", "eval_batch", "samples_per_prompt", "lora_rank", "results_dir")
    assert all(getattr(prof, f) == getattr(smoke, f) for f in unchanged)
    # flags go on top of the file; the base defaults to cpu
    flagged = resolve_profile(str(tmp_path / "my.yaml"), train_steps=7, eval_questions=None)
    assert flagged.train_steps == 7 and flagged.eval_questions == 2
    assert resolve_profile(write_yaml(tmp_path / "b.yaml", "eval_batch: 4\n")).name == "cpu (eval_batch 4)"
    # numbers equal to the base's keep its name; a field that changes no number (bench_jobs) too
    assert resolve_profile("cpu", train_steps=40).name == "cpu"
    assert resolve_profile("smoke", bench_jobs=2).name == "smoke"


@pytest.mark.parametrize("text, words", [
    ("base: smoke\ntrain_step: 5\n", "'train_step': not a profile field that can be set; fields: model,"),
    ("base: huge\n", "base must be one of smoke, cpu, paper, got 'huge'"),
    ("train_steps: five\n", "train_steps: 'five': expected an integer"),
    ("train_steps: 0\n", "train_steps: 0: must be at least 1"),
    ("learning_rate: -1\n", "learning_rate: -1: must be > 0"),
    ("logger: mlflow\n", "logger: 'mlflow': must be one of csv, tensorboard, wandb"),
    ("name: mine\n", "'name': not a profile field that can be set"),
    ("results_dir: elsewhere\n", "'results_dir': not a profile field that can be set"),
    ("- 1\n- 2\n", "must map profile fields to values"),
    ("train_steps: [\n", "is not valid YAML"),
])
def test_a_bad_profile_file_is_one_error_line_before_any_work(text, words, tmp_path, capsys):
    path = write_yaml(tmp_path / "bad.yaml", text)
    line = one_error_line(["run", "--task", "rng", "--method", "greedy", "--profile", path,
                           "--results_dir", str(tmp_path / "r")], capsys)
    assert f"profile file {path}" in line and words in line
    assert not (tmp_path / "r").exists()


def test_bad_profile_flags_and_a_missing_file_are_one_line(tmp_path, capsys):
    base = ["run", "--task", "rng", "--method", "greedy", "--profile", "smoke", "--results_dir", str(tmp_path / "r")]
    assert "--train_steps 0: must be at least 1" in one_error_line(base + ["--train_steps", "0"], capsys)
    assert "--eval_questions 0: must be at least 1" in one_error_line(base + ["--eval_questions", "0"], capsys)
    assert "--logger nope: must be one of csv, tensorboard, wandb" in one_error_line(base + ["--logger", "nope"],
                                                                                     capsys)
    missing = str(tmp_path / "none.yaml")
    assert f"profile file {missing}: No such file" in one_error_line(base[:5] + ["--profile", missing], capsys)
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- the results folder's key

@pytest.mark.parametrize("profile, model, precision, flags, folder, options", [
    ("cpu", None, None, {}, "results", "the default options"),
    ("smoke", None, None, {}, "results/smoke", "--profile smoke"),
    ("smoke", "tiny", None, {}, "results/smoke", "--profile smoke"),                  # the profile's own model
    ("smoke", "embedded", None, {}, "results/smoke/model-embedded", "--profile smoke --model embedded"),
    ("cpu", "EleutherAI/gpt-j-6b", None, {}, "results/model-EleutherAI--gpt-j-6b", "--model EleutherAI/gpt-j-6b"),
    ("cpu", None, "32", {}, "results", "the default options"),                  # 32 is 32-true
    ("cpu", None, "bf16-true", {}, "results/precision-bf16-true", "--precision bf16-true"),
    ("smoke", None, None, {"train_steps": 5}, "results/smoke/profile-train_steps-5", "--profile smoke --train_steps 5"),
    ("cpu", "tiny", "bf16-mixed", {"train_steps": 5, "eval_questions": 10},
     "results/profile-eval_questions-10__train_steps-5/model-tiny/precision-bf16-mixed",
     "--eval_questions 10 --train_steps 5 --model tiny --precision bf16-mixed"),
    ("paper", None, None, {}, "results/paper", "--profile paper"),
])
def test_the_folder_is_keyed_by_what_changes_the_numbers(profile, model, precision, flags, folder, options):
    prof = table_profile(profile, model, precision, **flags)
    assert prof.results_dir == folder
    assert keyed(prof) == prof                                   # keying twice changes nothing
    assert options_for(Path(folder)) == options               # and the folder names its options back
    assert prof.model == (model or PROFILES[profile].model)


def test_the_default_key_is_the_committed_layout_and_data_adds_the_last_component(tmp_path):
    assert keyed(get_profile("cpu")).results_dir == "results"
    assert (REPO / "results" / "runs" / "rng" / "gflownet" / "seed0" / "record.json").is_file()
    data = tmp_path / "prompts.txt"
    data.write_text("one\n")
    sha8 = data_fingerprint(data)[:8]
    assert results_root(table_profile("smoke", "embedded"), None, str(data)) == \
        Path(f"results/smoke/model-embedded/data-prompts.txt-{sha8}")
    assert options_for(Path(f"results/data-prompts.txt-{sha8}")) == "--data <the file prompts.txt>"
    assert results_root(table_profile("smoke", "embedded"), "mine", str(data)) == Path("mine")   # as given
    local = tmp_path / "my-model"
    local.mkdir()
    label = table_profile("cpu", str(local)).results_dir
    assert label.startswith("results/model-local-my-model-") and len(label.rsplit("-", 1)[1]) == 8
    assert options_for(Path(label)) == f"--results_dir {label}"


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GFNBENCH_TEST_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gfnbench.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def test_another_model_gets_its_own_folder_and_the_leaderboard_names_the_profile(tmp_path):
    """`--model tiny-gpt2 --profile smoke` once wrote into the smoke runs of the tiny model ("record.json
    exists"), with config.profile.model 'tiny'; and `leaderboard` after a smoke bench said only 'no run records'."""
    smoke = ["run", "--task", "rng", "--method", "greedy", "--profile", "smoke"]
    assert run_cli(*smoke, cwd=tmp_path).returncode == 0
    out = run_cli(*smoke, "--model", "tiny-gpt2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    default = json.loads((tmp_path / "results/smoke/runs/rng/greedy/seed0/record.json").read_text())
    other = json.loads((tmp_path / "results/smoke/model-tiny-gpt2/runs/rng/greedy/seed0/record.json").read_text())
    assert default["config"]["profile"]["model"] == "tiny" and default["model"].startswith("tiny-llama")
    assert other["config"]["profile"]["model"] == "tiny-gpt2" and other["model"].startswith("tiny-gpt2")
    assert other["config"]["profile"]["results_dir"] == "results/smoke/model-tiny-gpt2"
    out = run_cli("leaderboard", "--task", "rng", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "gfnbench: error: no run records under results/runs/rng; runs of task rng are under results/smoke (pass "
        "--profile smoke); results/smoke/model-tiny-gpt2 (pass --profile smoke --model tiny-gpt2)")
    out = run_cli("leaderboard", "--task", "rng", "--results_dir", "results", cwd=tmp_path)   # a folder named
    assert out.returncode == 2 and "no run records under results/runs/rng: produce them" in out.stderr
    out = run_cli("leaderboard", "--task", "rng", "--profile", "smoke", "--model", "tiny-gpt2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "- policy model: tiny-gpt2" in (tmp_path / "results/smoke/model-tiny-gpt2/rng.md").read_text()
    assert not (tmp_path / "results/smoke/rng.md").exists()


def test_a_profile_file_with_train_steps_5_runs_and_its_record_and_table_say_5(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "my.yaml", "base: smoke\ntrain_steps: 5\n")
    main(["bench", "--task", "rng", "--methods", "[gflownet]", "--seeds", "[0]", "--profile", path])
    folder = tmp_path / "results/smoke/profile-train_steps-5"
    record = json.loads((folder / "runs/rng/gflownet/seed0/record.json").read_text())
    assert record["profile"] == "smoke (train_steps 5)"
    assert record["config"]["profile"]["train_steps"] == 5 and record["config"]["profile"]["base"] == "smoke"
    assert record["budget"]["optimizer_steps"] == 5 * 6            # rng trains for 6x the profile's steps
    assert record["budget"]["reward_evaluations"] == 5 * 6 * 4      # smoke: 4 samples per prompt, 1 prompt a step
    table = (folder / "rng.md").read_text()
    assert "- profile: smoke (train_steps 5)" in table and "(120 reward evaluations)" in table


# --------------------------------------------------------------------------- the Python API

HEAVY = ("torch", "lightning", "transformers", "peft", "pandas", "matplotlib")


def test_importing_gfnbench_imports_nothing_heavy_and_keeps_its_api_names():
    code = (f"import sys, gfnbench\nheavy = [m for m in {HEAVY!r} if m in sys.modules]\nimport gfnbench.bench\n"
            "print(heavy, callable(gfnbench.bench), sys.modules['gfnbench.bench'].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["[]", "True", "gfnbench.bench"], out.stderr


def test_load_table_reads_the_committed_rng_runs():
    out = subprocess.run([sys.executable, "-c", "import gfnbench; t = gfnbench.load_table('rng'); print(t)"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("rng: ") and "gflownet" in out.stdout
    table = gfnbench.load_table("rng", results_dir=str(REPO / "results"))
    files = sorted((REPO / "results/runs/rng/gflownet").glob("seed*/record.json"))
    by_hand = [json.loads(f.read_text())["metrics"]["test"]["tv_exact"] for f in files]
    assert len(table.records) == len(list((REPO / "results/runs/rng").glob("*/seed*/record.json")))
    assert table.means.loc["gflownet", ("test", "tv_exact")] == pytest.approx(sum(by_hand) / len(by_hand))
    assert list(table.means.index[:2]) == ["greedy", "temperature"]     # the leaderboard's row order


def test_the_api_example_runs_on_the_tiny_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["api.py", str(tmp_path)])
    cells = runpy.run_path(str(REPO / "examples" / "api.py"), run_name="__main__")
    record, table = cells["record"], cells["table"]
    assert record["config"]["profile"]["name"] == "smoke" and (tmp_path / "rng.md").is_file()
    seeds = [json.loads((tmp_path / f"runs/rng/temperature/seed{s}/record.json").read_text()) for s in (0, 1)]
    assert record["metrics"] == seeds[0]["metrics"]
    by_hand = sum(r["metrics"]["test"]["tv_exact"] for r in seeds) / 2
    assert table.means.loc["temperature", ("test", "tv_exact")] == pytest.approx(by_hand)
    assert sorted((r["method"], r["seed"]) for r in table.records) == [("greedy", 0), ("temperature", 0),
                                                                      ("temperature", 1)]
    assert "rng: 3 runs under" in capsys.readouterr().out


def test_load_table_names_the_folder_that_holds_the_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gfnbench.run("rng", "greedy", 0, profile="smoke", train_steps=2)
    with pytest.raises(ValueError, match=r"under results/smoke/profile-train_steps-2 \(pass --profile smoke "
                                         r"--train_steps 2\)"):
        gfnbench.load_table("rng", profile="smoke")
    assert [r["method"] for r in gfnbench.load_table("rng", profile="smoke", train_steps=2).records] == ["greedy"]


# --------------------------------------------------------------------------- loggers

def test_the_csv_logger_needs_nothing_and_others_name_their_pip_install(tmp_path, capsys):
    from lightning.pytorch.loggers import CSVLogger

    from gfnbench.trainer import check_logger, make_loggers

    check_logger("csv")
    assert [type(lg) for lg in make_loggers("csv", tmp_path, "rng-gflownet-seed0")] == [CSVLogger]
    for name in ("tensorboard", "wandb"):
        try:
            __import__(name)
        except ImportError:
            argv = ["run", "--task", "rng", "--method", "gflownet", "--profile", "smoke", "--logger", name,
                    "--results_dir", str(tmp_path / "r")]
            assert f"pip install 'gfnbench[{name}]'" in one_error_line(argv, capsys)
            assert not (tmp_path / "r").exists()
        else:
            loggers = make_loggers(name, tmp_path, "rng-gflownet-seed0")
            assert type(loggers[0]) is CSVLogger and len(loggers) == 2


def test_the_wandb_run_is_named_after_the_run_folder(tmp_path):
    from gfnbench.methods import RunContext
    from gfnbench.trainer import run_name

    seed_dir = tmp_path / "runs" / "subj" / "gflownet_mstep" / "seed2"
    ctx = RunContext(seed=2, profile=get_profile("smoke"), log_dir=seed_dir / "train" / "mstep")
    assert run_name(ctx) == "subj-gflownet_mstep-seed2"
    assert run_name(replace(ctx, log_dir=seed_dir / "train")) == "subj-gflownet_mstep-seed2"


# --------------------------------------------------------------------------- bench progress

def test_eta_and_progress_lines_by_hand():
    from gfnbench.bench import duration, eta_seconds, progress_line

    assert eta_seconds(600.0, 3, 8) == 1000.0           # 200 s a run so far, 5 runs to go
    assert eta_seconds(10.0, 0, 8) is None and eta_seconds(50.0, 5, 5) == 0.0
    assert (duration(45), duration(1000), duration(3 * 3600)) == ("45 s", "17 min", "3.0 h")
    assert progress_line("rng/gflownet/seed1", 2, 8, 600.0) == \
        "[gfnbench] run 3 of 8: rng/gflownet/seed1; about 30 min left (from 2 finished runs)"
    assert progress_line("rng/greedy/seed0", 0, 1, 3.0) == \
        "[gfnbench] run 1 of 1: rng/greedy/seed0; time left known once a run finishes"


def test_bench_says_run_k_of_n_with_the_time_left(tmp_path, capsys):
    from gfnbench.bench import bench

    bench("rng", "smoke", [0, 1], ["temperature", "greedy"], str(tmp_path), jobs=1, tables=False)
    lines = [x for x in capsys.readouterr().out.splitlines() if "] run " in x]
    assert [x.split(";")[0] for x in lines] == ["[gfnbench] run 1 of 3: rng/temperature/seed0",
                                                "[gfnbench] run 2 of 3: rng/temperature/seed1",
                                                "[gfnbench] run 3 of 3: rng/greedy/seed0"]
    assert "time left known once" in lines[0] and "left (from 1 finished run)" in lines[1]
    assert "left (from 2 finished runs)" in lines[2]
    bench("rng", "smoke", [0, 1], ["temperature", "greedy"], str(tmp_path), jobs=1, tables=False)
    assert "] run " not in capsys.readouterr().out          # every run kept: nothing to count
