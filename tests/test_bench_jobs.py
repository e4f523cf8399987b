"""`bench --jobs N`: N processes share one bench's runs through the run locks, each run exactly once, and the
table says the bench's start-to-finish wall time."""
from __future__ import annotations

import json
import re

import pytest

from gfnbench.bench import bench, bench_jobs, bench_runs
from gfnbench.catalog import get_method
from gfnbench.profiles import get_profile

METHODS = ["gflownet", "greedy", "temperature"]


def _done_lines(text: str) -> list[str]:
    return re.findall(r"\] (rng/\S+) done in", text)


def test_two_jobs_run_each_run_once_and_the_table_states_the_wall_time(tmp_path, capsys):
    runs = bench_runs([get_method(m) for m in METHODS], [0, 1])
    assert runs[0] == ("gflownet", 0) and ("greedy", 1) not in runs      # training first; greedy once
    bench("rng", "smoke", [0, 1], METHODS, str(tmp_path), jobs=2)
    root = tmp_path / "runs" / "rng"
    job_log = (root / "bench-job1.log").read_text()
    done = _done_lines(capsys.readouterr().out) + _done_lines(job_log)
    want = sorted(f"rng/{m}/seed{s}" for m, s in runs)
    assert f"runs and tables go to {tmp_path}" in job_log, "the second job ran the bench over the same folder"
    assert sorted(done) == want, "each run runs exactly once, in one of the two jobs"
    assert sorted(str(p.parent.relative_to(root)) for p in root.glob("*/seed*/record.json")) == \
        sorted(w.removeprefix("rng/") for w in want)
    log = json.loads((root / "bench.json").read_text())
    assert log["jobs"] == 2 and sorted(map(tuple, log["ran"])) == sorted(runs) and log["wall_time_s"] > 0
    table = (tmp_path / "rng.md").read_text()
    assert "- bench wall time: " in table and "for every run (`gfnbench bench`, 2 job(s)" in table


def test_overwrite_with_two_jobs_replaces_each_run_once(tmp_path, capsys):
    bench("rng", "smoke", [0], ["temperature", "greedy"], str(tmp_path), jobs=1)
    root = tmp_path / "runs" / "rng"
    before = {p: p.stat().st_mtime for p in root.glob("*/seed*/record.json")}
    capsys.readouterr()
    bench("rng", "smoke", [0], ["temperature", "greedy"], str(tmp_path), overwrite=True, jobs=2)
    done = _done_lines(capsys.readouterr().out) + _done_lines((root / "bench-job1.log").read_text())
    assert sorted(done) == ["rng/greedy/seed0", "rng/temperature/seed0"]
    assert all(p.stat().st_mtime > t for p, t in before.items())


def test_job_count_rules():
    cpu, smoke = get_profile("cpu"), get_profile("smoke")
    assert bench_jobs(smoke, None, 10)[0] == 1                     # tests and CI: one process
    jobs, threads = bench_jobs(cpu, None, 10)
    assert 1 <= jobs <= 4 and threads >= 1
    assert bench_jobs(cpu, 3, 2)[0] == 2                            # never more jobs than runs
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        bench_jobs(cpu, 0, 5)


def test_a_missing_or_broken_bench_log_leaves_the_header_line_out():
    from gfnbench.tables import bench_wall_time

    records = [{"method": "gflownet", "seed": 0}, {"method": "greedy", "seed": 0}]
    log = {"ran": [["gflownet", 0]], "wall_time_s": 90.0, "jobs": 2, "torch_threads_per_job": 1, "cores": 2,
           "started_utc": "2026-12-01T19:55:08Z"}
    assert bench_wall_time(records, log) == ("1.5 min from start to table for 1 of the 2 runs (the others kept from "
                                             "before) (`gfnbench bench`, 2 job(s) x 1 torch thread(s) on 2 cores, "
                                             "started 2026-12-01T19:55:08Z)")
    assert bench_wall_time(records, None) == ""
    assert bench_wall_time(records, {"ran": [["gflownet", 0]]}) == ""        # no wall time in it
    assert bench_wall_time(records, {**log, "ran": [["sft", 1]]}) == ""      # ran none of this table's runs


def test_a_bench_checks_its_inputs_once_and_each_run_trusts_the_plan(tmp_path, monkeypatch):
    import gfnbench.preflight as preflight
    from gfnbench.methods import MethodSpec

    calls, check, settings = [], preflight._check, MethodSpec.check_settings
    monkeypatch.setattr(preflight, "_check", lambda *a: calls.append("inputs") or check(*a))
    monkeypatch.setattr(MethodSpec, "check_settings", lambda spec, o: calls.append(spec.name) or settings(spec, o))
    bench("rng", "smoke", [0, 1], ["greedy", "temperature"], str(tmp_path), jobs=1, tables=False)
    assert calls == ["inputs", "greedy", "temperature"]       # not once more per run
    assert len(list((tmp_path / "runs" / "rng").glob("*/seed*/record.json"))) == 3


def test_bench_json_is_written_only_when_the_bench_finishes(tmp_path, monkeypatch):
    import gfnbench.leaderboard as leaderboard

    bench("rng", "smoke", [0], ["temperature"], str(tmp_path), jobs=1)
    log = tmp_path / "runs" / "rng" / "bench.json"
    before = log.read_bytes()

    def no_table(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(leaderboard, "write_leaderboard", no_table)
    with pytest.raises(OSError):
        bench("rng", "smoke", [0], ["temperature"], str(tmp_path), overwrite=True, jobs=1)
    assert log.read_bytes() == before                  # the last finished bench's, still beside its table
    log.unlink()
    with pytest.raises(OSError):
        bench("rng", "smoke", [0], ["temperature"], str(tmp_path), overwrite=True, jobs=1)
    assert not log.exists()


def test_a_bench_that_runs_nothing_keeps_the_wall_time_of_the_bench_that_made_the_table(tmp_path):
    """`make bench` over a finished table (a clean clone's committed runs) rewrites the table, and its header keeps
    saying what the bench that ran the runs took."""
    bench("rng", "smoke", [0], ["greedy"], str(tmp_path), jobs=1)
    log = tmp_path / "runs" / "rng" / "bench.json"
    before = log.read_bytes()
    bench("rng", "smoke", [0], ["greedy"], str(tmp_path), jobs=1)
    assert log.read_bytes() == before
    assert "for every run (`gfnbench bench`, 1 job(s)" in (tmp_path / "rng.md").read_text()
