"""The command line: one clear error line, exit code 2, nothing written, for each kind of bad input."""
import subprocess
import sys

import pytest

from gfnbench.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["run", "--task", "nope", "--method", "greedy"], "unknown task 'nope'; known tasks: arith"),
    (["run", "--task", "arith", "--method", "nope"], "unknown method 'nope'; known methods:"),
    (["run", "--task", "arith", "--method", "greedy", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "--task", "arith", "--method", "greedy", "--model", "no-such-org/no-model"], "could not load model"),
])
def test_bad_input_is_one_clear_error(args, message, capsys, tmp_path):
    code, out = run_cli(args + ["--results_dir", str(tmp_path)], capsys)
    assert code == 2
    assert message in out.err
    assert not list(tmp_path.rglob("record.json"))


def test_seed_must_be_an_integer(capsys, tmp_path):
    code, out = run_cli(["run", "--task", "arith", "--method", "greedy", "--seed", "abc",
                         "--results_dir", str(tmp_path)], capsys)
    assert code != 0 and "seed" in out.err


def test_unwritable_results_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out = run_cli(["run", "--task", "arith", "--method", "greedy", "--results_dir", str(blocker / "sub")],
                        capsys)
    assert code == 2 and "not writable" in out.err


def test_n_samples_below_one_is_rejected(tiny):
    from gfnbench.sampling import SamplingConfig, sample

    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        sample(tiny.model, tiny.tokenizer, ["a"], 0, SamplingConfig(), stop_id=tiny.eos_id)


def test_help_lists_tasks_and_methods():
    out = subprocess.run([sys.executable, "-m", "gfnbench.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "arith" in out.stdout and "greedy" in out.stdout and "diverse_beam" in out.stdout


def test_smoke_run_writes_a_complete_record_and_refuses_to_overwrite(capsys, tmp_path):
    import json

    main(["run", "--task", "arith", "--method", "greedy", "--seed", "3", "--results_dir", str(tmp_path)])
    rec = json.loads((tmp_path / "runs/arith/greedy/seed3/record.json").read_text())
    for key in ("model", "scoring_model", "seed", "config", "versions", "git_commit", "metrics", "wall_time_s"):
        assert key in rec
    assert set(rec["metrics"]) == {"test_3op", "test_4op", "test_5op"}
    before = (tmp_path / "runs/arith/greedy/seed3/record.json").read_text()
    code, out = run_cli(["run", "--task", "arith", "--method", "greedy", "--seed", "3",
                         "--results_dir", str(tmp_path)], capsys)
    assert code == 2 and "exists" in out.err
    assert (tmp_path / "runs/arith/greedy/seed3/record.json").read_text() == before


def test_same_seed_same_numbers(tmp_path):
    import json

    from gfnbench.records import read_samples

    for d in ("a", "b"):
        main(["run", "--task", "arith", "--method", "temperature", "--seed", "1",
              "--results_dir", str(tmp_path / d)])
    read = lambda d: json.loads((tmp_path / d / "runs/arith/temperature/seed1/record.json").read_text())  # noqa
    assert read("a")["metrics"] == read("b")["metrics"]
    samples = lambda d: read_samples(tmp_path / d / "runs/arith/temperature/seed1")  # noqa
    assert samples("a") == samples("b")


def test_a_task_can_exclude_registered_methods(tmp_path):
    """rng drops rows that cannot say anything about matching a distribution; running one is refused."""
    from gfnbench.catalog import methods_for
    from gfnbench.runner import run

    rng_methods = methods_for("rng")
    assert "temperature" in rng_methods and "gflownet" in rng_methods
    assert not {"zero_shot", "beam", "diverse_beam"} & set(rng_methods)
    assert "zero_shot" in methods_for("arith")
    with pytest.raises(ValueError, match="does not apply to task 'rng'"):
        run("rng", "beam", 0, profile="smoke", results_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())
