"""Paired comparison of two rows (gfnbench compare): the difference matrix, its bootstrap interval checked
against an enumeration, what pairing buys over two separate intervals, and the command on committed runs."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gfnbench.paired import paired_cells
from gfnbench.stats import summarize

REPO = Path(__file__).resolve().parents[1]


def record(method, seed, values, ids=None, split="test", metric="accuracy"):
    ids = list(range(len(values))) if ids is None else ids
    return {"method": method, "seed": seed, "task": "t", "metrics": {split: {metric: float(np.mean(values))}},
            "per_question": {split: {metric: list(values), "ids": ids}}}


def test_two_by_two_interval_is_the_enumerated_extremes():
    """2 seeds x 2 questions: each resample weights seeds and questions by multinomial counts (2,0), (1,1) or
    (0,2); the smallest and largest of the 9 weighted means each have probability >= 1/16 > 2.5%, so the 95%
    percentile interval is exactly [min, max] of the enumeration."""
    a = [[1.0, 0.0], [1.0, 1.0]]
    b = [[0.0, 0.0], [1.0, 0.0]]
    records = [record("x", s, a[s]) for s in (0, 1)] + [record("y", s, b[s]) for s in (0, 1)]
    got = paired_cells(records, "x", "y").iloc[0]
    d = np.array(a) - np.array(b)                          # [[1, 0], [0, 1]]
    counts = [(2, 0), (1, 1), (0, 2)]
    means = [np.einsum("s,sq,q->", np.array(ws), d, np.array(wq)) / 4 for ws, wq in itertools.product(counts, counts)]
    assert got["difference"] == pytest.approx(0.5)
    assert (got["lo"], got["hi"]) == (pytest.approx(min(means)), pytest.approx(max(means)))
    assert (min(means), max(means)) == (0.0, 1.0)
    assert got["a_mean"] == pytest.approx(0.75) and got["b_mean"] == pytest.approx(0.25)
    assert not got["separated"]


def test_pairing_separates_a_constant_edge_that_two_intervals_cannot():
    """A beats B by 0.1 on every question of every seed, while questions differ by far more than 0.1: the
    leaderboard's two intervals overlap, the paired one is the point 0.1."""
    difficulty = np.linspace(0.0, 0.8, 20)
    records = [record("a", s, difficulty + 0.1) for s in range(3)] + [record("b", s, difficulty) for s in range(3)]
    got = paired_cells(records, "a", "b").iloc[0]
    assert (got["difference"], got["lo"], got["hi"]) == pytest.approx((0.1, 0.1, 0.1))
    assert got["separated"] and got["n_seeds"] == 3 and got["n_questions"] == 20
    cells = summarize(records).set_index("method")
    assert cells.loc["a", "lo"] < cells.loc["b", "hi"]                          # unpaired: they overlap


def test_only_seeds_both_rows_ran_are_paired_and_other_questions_are_refused():
    records = [record("a", 0, [1, 1]), record("a", 1, [1, 0]), record("b", 1, [0, 0])]
    got = paired_cells(records, "a", "b").iloc[0]
    assert got["seeds"] == "1" and got["difference"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different test questions"):
        paired_cells([record("a", 0, [1, 1]), record("b", 0, [1, 1], ids=[5, 6])], "a", "b")
    with pytest.raises(ValueError, match="no run records of method 'c'"):
        paired_cells(records, "a", "c")
    with pytest.raises(ValueError, match="share no per-question metric"):
        paired_cells([record("a", 0, [1]), record("b", 0, [1], metric="valid")], "a", "b")


def test_compare_on_the_committed_arith_runs_agrees_with_their_records(tmp_path):
    """The command end to end on the committed runs: A's and B's means are the records' own metric means, and
    an unknown method exits 2 with one line and writes nothing."""
    (tmp_path / "runs").symlink_to(REPO / "results" / "runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gfnbench.cli", "compare", "--task", "arith", "--a", "sft", "--b", "grpo",
           "--metrics", "[accuracy]", "--results_dir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "arith_paired_sft_vs_grpo.csv").read_text().splitlines()
    assert len(lines) == 1 + 3                                   # header + the three test splits' accuracy
    runs = REPO / "results" / "runs" / "arith"

    def mean(method, split):
        return np.mean([json.loads(p.read_text())["metrics"][split]["accuracy"]
                        for p in sorted((runs / method).glob("seed*/record.json"))])

    for line in lines[1:]:
        split, metric, a, b, a_mean, b_mean, diff = line.split(",")[:7]
        assert (a, b, metric) == ("sft", "grpo", "accuracy")
        assert float(a_mean) == pytest.approx(mean("sft", split), abs=1e-5)
        assert float(b_mean) == pytest.approx(mean("grpo", split), abs=1e-5)
        assert float(diff) == pytest.approx(float(a_mean) - float(b_mean), abs=1e-5)
    bad = subprocess.run(cmd[:7] + ["nope"] + cmd[8:], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr
    assert not list(tmp_path.glob("*nope*"))


def test_bench_writes_the_tasks_standing_comparisons_when_it_ran_both_rows(tmp_path, monkeypatch):
    """Arith's paired questions come with its table; a pair whose rows the bench did not run is not written.
    Checked on a smoke bench of two untrained rows, with the task's pairs swapped for ones among them."""
    from gfnbench.bench import bench
    from gfnbench.tasks.arith import Arithmetic

    assert ("sft_gflownet", "sft") in Arithmetic.paired_comparisons
    monkeypatch.setattr(Arithmetic, "paired_comparisons", (("greedy", "zero_shot"), ("greedy", "sft")))
    paths = bench("arith", "smoke", [0], ["greedy", "zero_shot"], str(tmp_path), jobs=1)
    assert tmp_path / "arith_paired_greedy_vs_zero_shot.csv" in paths
    assert not list(tmp_path.glob("arith_paired_greedy_vs_sft*"))
    lines = (tmp_path / "arith_paired_greedy_vs_zero_shot.csv").read_text().splitlines()
    runs = {m: json.loads((tmp_path / "runs" / "arith" / m / "seed0" / "record.json").read_text())
            for m in ("greedy", "zero_shot")}
    for line in lines[1:]:
        split, metric, a, b, a_mean, b_mean, diff = line.split(",")[:7]
        expected = np.mean(runs["greedy"]["per_question"][split][metric]) - \
            np.mean(runs["zero_shot"]["per_question"][split][metric])
        assert float(diff) == pytest.approx(expected, rel=1e-5, abs=1e-5)   # the csv keeps 6 digits
