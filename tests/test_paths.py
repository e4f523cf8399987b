"""Nothing escapes the results folder: task and method names are one safe path component (registration and the
CLI refuse the rest in one line), every run folder and table file is checked to resolve inside the results folder,
and the Makefile passes its variables on as single quoted arguments and keeps gfnbench's exit code."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gfnbench.cli import main
from gfnbench.names import check_inside, check_name, name_problem
from gfnbench.records import run_dir

REPO = Path(__file__).resolve().parent.parent


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["arith", "rng_peaked", "my-task.v2", "A0", "..x", "x.."])
def test_plain_names_are_accepted(name):
    assert name_problem(name) is None and check_name(name, "task") == name


@pytest.mark.parametrize("name, words", [("../../x", "only letters, digits"), ("a/b", "only letters, digits"),
                                         ("..", "may not be '.' or '..'"), (".", "may not be '.' or '..'"),
                                         ("", "only letters, digits"), ("x; touch F", "only letters, digits"),
                                         ("/abs", "only letters, digits"), ("tâche", "only letters, digits"),
                                         (3, "is a int, not a string")])
def test_unsafe_names_are_refused_in_one_line(name, words):
    with pytest.raises(ValueError, match="rename the method") as err:
        check_name(name, "method")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_check_inside_follows_dots_and_links(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    assert check_inside(root / "runs" / "a" / "seed0", root) == root / "runs" / "a" / "seed0"
    assert check_inside(root, root) == root
    with pytest.raises(ValueError, match="outside the results folder"):
        check_inside(root / "runs" / ".." / ".." / "x", root)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside the results folder"):
        check_inside(root / "link" / "x.md", root)
    with pytest.raises(ValueError, match="outside the results folder"):
        check_inside(tmp_path / "results2" / "x", root)       # a sibling that shares the folder's name prefix


def test_run_dir_refuses_a_name_that_climbs_out(tmp_path):
    assert run_dir(tmp_path, "arith", "greedy", 0) == tmp_path / "runs" / "arith" / "greedy" / "seed0"
    with pytest.raises(ValueError, match="outside the results folder"):
        run_dir(tmp_path / "r", "../../x", "greedy", 0)
    with pytest.raises(ValueError, match="outside the results folder"):
        run_dir(tmp_path / "r", "arith", "../../../x", 0)


def test_write_leaderboard_refuses_an_unsafe_task_name(tmp_path):
    from gfnbench.leaderboard import write_leaderboard

    with pytest.raises(ValueError, match="task name '../x'"):
        write_leaderboard(tmp_path, "../x")
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the cases, end to end

def one_error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("gfnbench: error: ") and "Traceback" not in lines[0]
    return lines[0]


def test_leaderboard_task_that_climbs_out_writes_nothing(tmp_path, capsys):
    """`leaderboard --task ../../x --results_dir R/s/t` once wrote R/x.md and friends."""
    results = tmp_path / "R" / "s" / "t"
    (results / "runs" / "arith" / "greedy").mkdir(parents=True)
    before = tree(tmp_path)
    line = one_error_line(["leaderboard", "--task", "../../x", "--results_dir", str(results)], capsys)
    assert "task name '../../x' may hold only letters, digits" in line
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind, source", [
    ("task", "from gfnbench.tasks import Task, register_task\n\n\n@register_task('../../x')\nclass X(Task):\n"
             "    pass\n"),
    ("method", "from gfnbench.methods import Method, register_method\n\n\n@register_method('../../x', 'escapes')\n"
               "class X(Method):\n    pass\n"),
])
def test_a_file_registering_a_name_that_climbs_out_is_refused(kind, source, tmp_path, capsys):
    """A task or method file registering '../../x' once made `run` write its record outside the results folder."""
    sentinel = tmp_path / "sentinel"
    results = sentinel / "R" / "s"
    results.mkdir(parents=True)
    user_file = tmp_path / f"escape_{kind}.py"
    user_file.write_text(source)
    before = tree(tmp_path)
    task, method = (str(user_file), "greedy") if kind == "task" else ("arith", str(user_file))
    line = one_error_line(["run", "--task", task, "--method", method, "--profile", "smoke",
                           "--results_dir", str(results)], capsys)
    assert f"{user_file.name}:4: ValueError: {kind} name '../../x' may hold only letters, digits" in line
    assert tree(tmp_path) == before


@pytest.mark.parametrize("argv, words", [
    (["run", "--task", "../../x", "--method", "greedy"], "task name '../../x'"),
    (["run", "--task", "arith", "--method", "../x"], "method name '../x'"),
    (["bench", "--task", "arith", "--methods", "[greedy, ..]"], "method name '..'"),
    (["methods", "--task", "a/b"], "task name 'a/b'"),
])
def test_the_cli_refuses_unsafe_names_before_any_work(argv, words, tmp_path, capsys):
    line = one_error_line(argv + ([] if argv[0] == "methods" else ["--results_dir", str(tmp_path / "r")]), capsys)
    assert words in line and not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- the Makefile

@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_passes_variables_as_single_arguments_and_keeps_the_exit_code(tmp_path):
    """`make leaderboard TASK='x; touch F'` once created F and exited 0. Here the Makefile runs in a scratch
    folder with VENV pointing at a stand-in whose gfnbench is this venv's, so nothing is installed."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "gfnbench").symlink_to(Path(sys.executable).parent / "gfnbench")
    os.utime(tmp_path / "pyproject.toml", (1, 1))          # older than .installed: `setup` has nothing to do
    (venv / ".installed").write_text("")
    out = subprocess.run(["make", "-s", "leaderboard", "TASK=x; touch F", f"VENV={venv}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout + out.stderr
    assert "task name 'x; touch F' may hold only letters" in out.stderr     # one argument, as typed
    assert not (tmp_path / "F").exists() and not (REPO / "F").exists()
    out = subprocess.run(["make", "-s", "-n", "bench", "SEEDS= 3  4 ", "TASK=a'b", f"VENV={venv}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert '--task "$TASK"' in out.stdout and '--seeds "$SEED_LIST"' in out.stdout
    assert '--precision "$PRECISION"' in out.stdout
    shown = subprocess.run(["make", "-s", "--eval", 'show: ; @printf "%s|%s" "$$SEED_LIST" "$$TASK"', "show",
                            "SEEDS= 3  4 ", "TASK=a'b", f"VENV={venv}"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert shown.stdout == "[3,4]|a'b"
