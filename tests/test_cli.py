"""The command line: one clear error line, exit code 2, nothing written, for each kind of bad input."""
import subprocess
import sys
from pathlib import Path

import pytest

from gfnbench.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr()


@pytest.mark.parametrize("args, message", [
    (["run", "--task", "nope", "--method", "greedy", "--profile", "smoke"], "unknown task 'nope'; known tasks: arith"),
    (["run", "--task", "arith", "--method", "nope", "--profile", "smoke"], "unknown method 'nope'; known methods:"),
    (["run", "--task", "arith", "--method", "greedy", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "--task", "arith", "--method", "greedy", "--profile", "smoke", "--model", "no-such-org/no-model"],
     "could not load model"),
])
def test_bad_input_is_one_clear_error(args, message, capsys, tmp_path):
    code, out = run_cli(args + ["--results_dir", str(tmp_path)], capsys)
    assert code == 2
    assert message in out.err
    assert not list(tmp_path.rglob("record.json"))


def test_seed_must_be_an_integer(capsys, tmp_path):
    code, out = run_cli(["run", "--task", "arith", "--method", "greedy", "--profile", "smoke", "--seed", "abc",
                         "--results_dir", str(tmp_path)], capsys)
    assert code != 0 and "seed" in out.err


def test_unwritable_results_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out = run_cli(["run", "--task", "arith", "--method", "greedy", "--profile", "smoke",
                         "--results_dir", str(blocker / "sub")], capsys)
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

    main(["run", "--task", "arith", "--method", "greedy", "--seed", "3", "--profile", "smoke",
          "--results_dir", str(tmp_path)])
    rec = json.loads((tmp_path / "runs/arith/greedy/seed3/record.json").read_text())
    for key in ("model", "scoring_model", "seed", "config", "versions", "git_commit", "metrics", "wall_time_s"):
        assert key in rec
    assert set(rec["metrics"]) == {"test_3op", "test_4op", "test_5op"}
    before = (tmp_path / "runs/arith/greedy/seed3/record.json").read_text()
    code, out = run_cli(["run", "--task", "arith", "--method", "greedy", "--seed", "3", "--profile", "smoke",
                         "--results_dir", str(tmp_path)], capsys)
    assert code == 2 and "exists" in out.err
    assert (tmp_path / "runs/arith/greedy/seed3/record.json").read_text() == before


def test_same_seed_same_numbers(tmp_path):
    import json

    from gfnbench.records import read_samples

    for d in ("a", "b"):
        main(["run", "--task", "arith", "--method", "temperature", "--seed", "1", "--profile", "smoke",
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


# --------------------------------------------------------------------------- start-up: nothing heavy before a run

HEAVY = ("torch", "lightning", "transformers", "peft", "evaluate", "pandas", "matplotlib")


def heavy_modules_after(code: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """The heavy packages a fresh interpreter has imported after running `code` (which may exit)."""
    probe = (f"import atexit, sys\natexit.register(lambda: print('HEAVY', [m for m in {HEAVY!r} "
             f"if m in sys.modules]))\n{code}\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("HEAVY")][-1]
    return eval(line.removeprefix("HEAVY ")), out   # noqa: S307  (our own printed list)


def test_importing_the_cli_imports_nothing_heavy():
    heavy, _ = heavy_modules_after("import gfnbench.cli")
    assert heavy == []


@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["tasks"], 0), (["methods"], 0),
                                        (["run", "--task", "nosuch", "--method", "greedy"], 2),
                                        (["run", "--task", "arith", "--method", "nosuch"], 2),
                                        (["run", "--task", "arith", "--method", "greedy", "--profile", "huge"], 2),
                                        (["run", "--task", "arith", "--method", "greedy", "--seed", "x"], 2),
                                        (["leaderboard", "--task", "../x"], 2)])
def test_listings_help_and_errors_found_by_name_import_nothing_heavy(argv, code):
    heavy, out = heavy_modules_after(f"from gfnbench.cli import main\nmain({argv!r})")
    assert out.returncode == code, out.stderr
    assert heavy == [], (argv, heavy)


def test_the_static_listing_matches_the_registries():
    """`tasks`, `methods` and the early name checks read gfnbench/listing.py, not the registries (which import
    torch): it must say exactly what the registries say (their order depends on which test imported what first)."""
    from gfnbench.catalog import all_methods
    from gfnbench.listing import BUILTIN_METHODS, BUILTIN_TASKS, method_scope
    from gfnbench.tasks import TASKS

    builtin = {n: c for n, c in TASKS.items() if c.__module__.startswith("gfnbench.tasks.")}
    live_tasks = {name: cls.description for name, cls in sorted(builtin.items())}
    assert live_tasks == BUILTIN_TASKS, f"gfnbench/listing.py BUILTIN_TASKS should be {live_tasks}"
    live = {n: f"{s.description} [{method_scope(s)}]" for n, s in all_methods().items()
            if s.factory.__module__.startswith("gfnbench.")}
    assert live == BUILTIN_METHODS, f"gfnbench/listing.py BUILTIN_METHODS should be {live}"


def test_methods_for_a_task_reads_the_registry(capsys):
    from gfnbench.cli import methods

    methods("rng")
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "gflownet_tb" in names and "beam" not in names and "zero_shot" not in names


# --------------------------------------------------------------------------- one default profile

def test_run_bench_leaderboard_and_make_share_one_default_profile():
    import inspect

    from gfnbench import cli

    defaults = {f.__name__: inspect.signature(f).parameters["profile"].default
                for f in (cli.run, cli.bench, cli.leaderboard)}
    assert defaults == {"run": "cpu", "bench": "cpu", "leaderboard": "cpu"} and cli.DEFAULT_PROFILE == "cpu"
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "\nPROFILE ?= cpu\n" in makefile
    assert "\nPRECISION ?= auto\n" in makefile        # make bench: bf16 where the host has AMX, else fp32


# --------------------------------------------------------------------------- quiet by default

def warnings_shown(verbose: bool) -> str:
    """stderr of a fresh interpreter that sets the CLI's quiet mode, then meets one known warning, one unknown
    warning, Lightning's tip and an ordinary Lightning log line."""
    code = (
        "import logging, sys, warnings\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(message)s')\n"
        f"from gfnbench.cli import quiet\nquiet({verbose})\n"
        "warnings.warn('`past_key_values` is deprecated and will be removed in version 5.40.0 for "
        "`LlamaModel.forward`. Use `cache` instead.', FutureWarning)\n"
        "warnings.warn('Found 33 module(s) in eval mode at the start of training. This may lead to', UserWarning)\n"
        "warnings.warn('something new and real', FutureWarning)\n"
        "log = logging.getLogger('lightning.pytorch.utilities.rank_zero')\n"
        "log.info('💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](x)')\n"
        "log.info('`Trainer.fit` stopped: `max_steps=3` reached.')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stderr


def test_known_third_party_noise_is_hidden_unless_verbose():
    quiet = warnings_shown(verbose=False)
    assert "something new and real" in quiet and "max_steps=3" in quiet          # the rest still shows
    assert "past_key_values" not in quiet and "eval mode" not in quiet and "litlogger" not in quiet
    loud = warnings_shown(verbose=True)
    assert all(words in loud for words in ("past_key_values", "eval mode", "litlogger", "something new"))


def test_a_smoke_training_run_prints_no_third_party_warning(tmp_path):
    out = subprocess.run([sys.executable, "-m", "gfnbench.cli", "run", "--task", "rng", "--method", "gflownet",
                          "--profile", "smoke", "--results_dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for noise in ("Warning", "warnings.warn", "deprecated", "litlogger", "eval mode", "GPU available"):
        assert noise not in text, (noise, text)
