"""Leaderboard: exact bootstrap on small samples, tables that match it, and refusal to mix incomparable runs."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from gfnbench.leaderboard import write_leaderboard
from gfnbench.records import run_dir, write_run
from gfnbench.stats import bootstrap_ci, seed_question_bootstrap, summarize
from gfnbench.tables import format_cell, render_csv, render_latex, render_markdown

# --------------------------------------------------------------------------- bootstrap

def test_exact_bootstrap_three_values():
    values = [1.0, 2.0, 3.0]
    means = []
    for i in range(3):
        for j in range(3):
            for k in range(3):
                means.append((values[i] + values[j] + values[k]) / 3)
    assert len(means) == 27
    mean, lo, hi = bootstrap_ci(values)
    assert mean == pytest.approx(2.0)
    assert lo == pytest.approx(np.quantile(means, 0.025, method="linear"))
    assert hi == pytest.approx(np.quantile(means, 0.975, method="linear"))
    assert bootstrap_ci(values, seed=123) == (mean, lo, hi)  # exact: the seed plays no part


def test_two_values_by_hand():
    # resamples of [0, 1]: means 0, .5, .5, 1 -> sorted positions 0..3; linear quantile at q is at position 3q
    mean, lo, hi = bootstrap_ci([0.0, 1.0])
    assert mean == 0.5
    assert lo == pytest.approx(0.5 * (3 * 0.025))  # between 0 and .5 at 0.075 of the way
    assert hi == pytest.approx(1 - 0.5 * (3 * 0.025))
    assert bootstrap_ci([0.0, 1.0], level=0.5) == pytest.approx((0.5, 0.375, 0.625))


def test_constant_and_single():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3, 0.3)
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    mean, lo, hi = bootstrap_ci([0.1] * 9)  # Monte-Carlo branch
    assert lo == hi == mean == pytest.approx(0.1)


def test_bad_input():
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], level=1.0)


def test_exact_matches_itertools_enumeration_up_to_six():
    rng = np.random.default_rng(5)
    for n in (4, 5, 6):
        x = rng.normal(size=n)
        means = np.array([x[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])
        expected = np.quantile(means, [0.025, 0.975], method="linear")
        _, lo, hi = bootstrap_ci(x)
        assert (lo, hi) == pytest.approx(tuple(expected), abs=1e-12)


def test_monte_carlo_branch_close_to_reference_and_reproducible():
    x = np.array([0.12, 0.35, 0.31, 0.28, 0.5, 0.05, 0.22, 0.4])  # 8**8 > 100000: Monte Carlo
    ref_means = x[np.random.default_rng(2024).integers(0, 8, size=(400_000, 8))].mean(axis=1)
    ref_lo, ref_hi = np.quantile(ref_means, [0.025, 0.975])
    mean, lo, hi = bootstrap_ci(x, seed=7)
    assert mean == pytest.approx(x.mean())
    assert lo == pytest.approx(ref_lo, abs=0.01)
    assert hi == pytest.approx(ref_hi, abs=0.01)
    assert bootstrap_ci(x, seed=7) == (mean, lo, hi)
    assert bootstrap_ci(x, seed=8) != (mean, lo, hi)


# --------------------------------------------------------------------------- fake runs

METHODS = {"greedy": [0.30, 0.35, 0.25], "gfn_tb": [0.50, 0.42, 0.61]}
SEEDS = [0, 1, 2]


def fake_record(method: str, seed: int, accuracy: float, **overrides) -> dict:
    record = {
        "task": "arith", "method": method, "seed": seed, "profile": "cpu", "model": "SmolLM2-135M",
        "scoring_model": "SmolLM2-135M, adapters off", "data": "synthetic (seeded generator)",
        "metrics": {"test_3op": {"accuracy": accuracy, "logp_ref": -10.0 - seed},
                    "test_4op": {"accuracy": accuracy / 2, "logp_ref": -20.0 + seed}},
        "config": {"eval_samples": 4}, "versions": {"torch": "2.x"}, "git_commit": "abc123",
        "wall_time_s": 2.0,
    }
    if method.startswith("gfn"):
        record["train_curve"] = [{"step": s, "loss": 1.0 / (s + 1), "log_reward": -5 + s + seed} for s in range(5)]
    record.update(overrides)
    return record


def write_fake_runs(root, **overrides) -> list[dict]:
    records = []
    for method, values in METHODS.items():
        for seed, value in zip(SEEDS, values):
            record = fake_record(method, seed, value, **overrides)
            write_run(run_dir(root, "arith", method, seed), record, [{"text": "x"}])
            records.append(record)
    return records


def test_summarize_long_format():
    records = [fake_record(m, s, v) for m, vals in METHODS.items() for s, v in zip(SEEDS, vals)]
    df = summarize(records)
    assert list(df.columns) == ["method", "split", "metric", "mean", "lo", "hi", "n_seeds", "seeds", "n_questions",
                                "ci"]
    assert len(df) == 2 * 2 * 2
    row = df[(df.method == "gfn_tb") & (df.split == "test_3op") & (df.metric == "accuracy")].iloc[0]
    assert (row["mean"], row["lo"], row["hi"]) == bootstrap_ci(METHODS["gfn_tb"])
    assert row["n_seeds"] == 3 and row["seeds"] == "0 1 2" and row["ci"] == "seeds"
    with pytest.raises(ValueError, match="two records"):
        summarize(records + records[:1])


def test_markdown_order_and_missing_cells():
    records = [fake_record("zeta", 0, 0.1), fake_record("alpha", 0, 0.2), fake_record("zeta", 1, 0.3)]
    records[1]["metrics"] = {"test_3op": {"accuracy": 0.2}}
    df = summarize(records)
    md = render_markdown(df, records, "arith")
    acc = md.split("## accuracy")[1].split("##")[0]
    assert acc.index("| zeta |") < acc.index("| alpha |")  # first appearance
    assert "(n=1)" in acc and "–" in acc
    md2 = render_markdown(df, records, "arith", method_order=["alpha", "zeta"])
    acc2 = md2.split("## accuracy")[1].split("##")[0]
    assert acc2.index("| alpha |") < acc2.index("| zeta |")


def test_latex_escapes_and_needs_no_jinja():
    records = [fake_record("gfn_tb", s, v) for s, v in zip(SEEDS, METHODS["gfn_tb"])]
    tex = render_latex(summarize(records))
    assert tex.count("\\begin{tabular}") == 2
    assert "gfn\\_tb &" in tex and "test\\_3op" in tex
    mean, lo, hi = bootstrap_ci(METHODS["gfn_tb"])
    assert f"${mean:.3f}_{{\\,[{lo:.3f},\\,{hi:.3f}]}}$" in tex


# --------------------------------------------------------------------------- end to end

def test_write_leaderboard_end_to_end(tmp_path):
    write_fake_runs(tmp_path)
    paths = write_leaderboard(tmp_path, "arith")
    assert [p.name for p in paths] == ["arith.md", "arith.csv", "arith.tex", "arith.png"]
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in paths)
    assert paths[3].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    md = paths[0].read_text()
    assert "log-likelihood scored by: SmolLM2-135M, adapters off" in md
    assert "policy model: SmolLM2-135M" in md and "synthetic (seeded generator)" in md
    assert "profile: cpu" in md and "seeds: 0, 1, 2" in md and "abc123" in md
    assert "95% percentile-bootstrap CI, written as mean [lo, hi], over 3 seeds (seeds resampled" in md
    acc = md.split("## accuracy")[1].split("## logp_ref")[0]
    assert acc.index("| greedy |") < acc.index("| gfn_tb |")  # a known row (labels.METHOD_ORDER) before custom
    for method, values in METHODS.items():
        mean, lo, hi = bootstrap_ci(values)
        assert f"| {method} | {format_cell(mean, lo, hi)} |" in acc
        assert format_cell(mean, lo, hi) == f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
        half = bootstrap_ci([v / 2 for v in values])
        assert f"{format_cell(*half)} |\n" in acc.split(f"| {method} |")[1]

    csv = pd.read_csv(paths[1])
    for method, values in METHODS.items():
        row = csv[(csv.method == method) & (csv.split == "test_3op") & (csv.metric == "accuracy")].iloc[0]
        assert (row["mean"], row["lo"], row["hi"]) == pytest.approx(bootstrap_ci(values), abs=1e-12)
        assert row["n_seeds"] == 3

    logp = csv[(csv.method == "greedy") & (csv.split == "test_3op") & (csv.metric == "logp_ref")].iloc[0]
    assert (logp["mean"], logp["lo"], logp["hi"]) == pytest.approx(bootstrap_ci([-10.0, -11.0, -12.0]))

    out = tmp_path / "tables"
    assert [p.parent for p in write_leaderboard(tmp_path, "arith", out_dir=out)] == [out] * 4
    assert (out / "arith.md").read_text() == md  # deterministic

    write_leaderboard(tmp_path, "arith", out_dir=out, method_order=["greedy"])
    acc = (out / "arith.md").read_text().split("## accuracy")[1]
    assert acc.index("| greedy |") < acc.index("| gfn_tb |")
    tex = (out / "arith.tex").read_text()
    assert tex.index("greedy &") < tex.index("gfn\\_tb &")


def test_write_leaderboard_without_curves(tmp_path):
    for seed, value in zip(SEEDS, METHODS["greedy"]):
        write_run(run_dir(tmp_path, "arith", "greedy", seed), fake_record("greedy", seed, value), [])
    assert write_leaderboard(tmp_path, "arith")[3].exists()


def test_empty_results_error(tmp_path):
    with pytest.raises(ValueError, match="gfnbench bench --task arith"):
        write_leaderboard(tmp_path, "arith")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key, other", [("model", "Qwen2.5-0.5B"), ("profile", "paper")])
def test_mixed_models_or_profiles_error(tmp_path, key, other):
    write_fake_runs(tmp_path)
    write_run(run_dir(tmp_path, "arith", "beam", 0), fake_record("beam", 0, 0.3, **{key: other}), [])
    with pytest.raises(ValueError, match=f"{key}s") as err:
        write_leaderboard(tmp_path, "arith")
    assert other in str(err.value) and "beam/seed0" in str(err.value) and "--results_dir" in str(err.value)
    assert not (tmp_path / "arith.md").exists()


def test_mixed_task_settings_error(tmp_path):
    """rng's "." stop and rng_eos's <|im_end|> (or any other task setting) never share a table."""
    write_fake_runs(tmp_path, config={"eval_samples": 4, "task_settings": {"stop": "."}})
    odd = fake_record("beam", 0, 0.3, config={"eval_samples": 4, "task_settings": {"stop": "eos"}})
    write_run(run_dir(tmp_path, "arith", "beam", 0), odd, [])
    with pytest.raises(ValueError, match="mix task settings") as err:
        write_leaderboard(tmp_path, "arith")
    assert '"stop": "eos"' in str(err.value) and "beam/seed0" in str(err.value)
    assert not (tmp_path / "arith.md").exists()


def test_built_in_data_with_and_without_a_checksum_is_one_data_set(tmp_path):
    """Records from before issue 26 give built-in data no checksum; newer ones give its file's and say built-in."""
    write_fake_runs(tmp_path)
    newer = fake_record("beam", 0, 0.3, data_sha256="ab" * 32, data_builtin=True)
    write_run(run_dir(tmp_path, "arith", "beam", 0), newer, [])
    write_leaderboard(tmp_path, "arith")
    assert (tmp_path / "arith.md").exists()


def test_render_csv_roundtrip():
    records = [fake_record("greedy", s, v) for s, v in zip(SEEDS, METHODS["greedy"])]
    df = summarize(records)
    from io import StringIO

    back = pd.read_csv(StringIO(render_csv(df)), dtype={"seeds": str})
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


def test_tradeoff_panel_plots_each_method_at_its_means_with_ci_bars(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gfnbench.plots import _tradeoff_panel, tradeoff_axes

    records = []
    for method, (lps, divs) in {"beam": ([-5.0, -6.0, -7.0], [0.1, 0.2, 0.3]),
                                "gflownet": ([-8.0, -8.5, -9.0], [0.5, 0.6, 0.4])}.items():
        for seed, lp, div in zip(SEEDS, lps, divs):
            records.append(fake_record(method, seed, 0.0, task="continuation", metrics={
                "test": {"logp_ref": lp - 3, "logp_ref_max": lp, "diversity": div}}))
    df = summarize(records)
    assert tradeoff_axes(df) == ("logp_ref_max", "diversity")
    assert tradeoff_axes(df[df.metric != "logp_ref_max"]) == ("logp_ref", "diversity")
    assert tradeoff_axes(df[df.metric != "diversity"]) is None
    fig, ax = plt.subplots()
    _tradeoff_panel(ax, df, "logp_ref_max", "diversity", ["gflownet", "beam"])
    points = {c.get_label(): c for c in ax.containers}
    assert list(points) == ["gflownet", "beam"]
    for method, (lps, divs) in {"beam": ([-5.0, -6.0, -7.0], [0.1, 0.2, 0.3])}.items():
        container = points[method]
        x_mean, x_lo, x_hi = bootstrap_ci(lps)
        y_mean, y_lo, y_hi = bootstrap_ci(divs)
        line = container.lines[0]
        assert (line.get_xdata()[0], line.get_ydata()[0]) == pytest.approx((x_mean, y_mean))
        x_bar, y_bar = (np.asarray(c.get_segments()[0]) for c in container.lines[2])
        assert sorted(x_bar[:, 0]) == pytest.approx([x_lo, x_hi]) and sorted(y_bar[:, 1]) == pytest.approx([y_lo, y_hi])
    plt.close(fig)
    for seed in SEEDS:
        for r in records:
            if r["seed"] == seed:
                write_run(run_dir(tmp_path, "continuation", r["method"], seed), r, [])
    assert write_leaderboard(tmp_path, "continuation")[3].read_bytes()[:4] == b"\x89PNG"


def test_training_budget_is_read_from_each_record_without_knowing_methods():
    from gfnbench.tables import budget_lines

    records = [
        {"method": "my_method", "budget": {"reward_evaluations": 320, "optimizer_steps": 40,
                                           "summary": "40 steps x 8 samples"}},
        {"method": "old_trained", "config": {"method": {"train_steps": 40}}},
        {"method": "greedy", "budget": None, "config": {"method": {"shots": 0}}},
    ]
    assert budget_lines(records, ["greedy", "my_method", "old_trained"]) == [
        "my_method: 40 steps x 8 samples (320 reward evaluations); reward calls not counted; test-time reward "
        "calls not counted; labelled items not counted",
        "old_trained: not recorded (the record predates budgets)"]


def test_headings_name_each_metrics_direction(tmp_path):
    records = write_fake_runs(tmp_path, metric_directions={"logp_ref": "lower"})
    md = render_markdown(summarize(records), records, "arith")
    assert "## accuracy (↑ higher is better)" in md      # harness default
    assert "## logp_ref: log-lik. (↓ lower is better)" in md       # the task's own word wins


def test_learning_curves_png_from_records(tmp_path):
    from gfnbench.plots import learning_curves

    for seed in (0, 1):
        curve = [{"batches": b, "reward_evals": 8 * b, "wall_s": 1.5 * b, "tv_exact": 1.0 / (b + 1 + seed)}
                 for b in (0, 10, 20)]
        write_run(run_dir(tmp_path, "arith", "gfn", seed), fake_record("gfn", seed, 0.5, learning_curve=curve), [])
        write_run(run_dir(tmp_path, "arith", "greedy", seed), fake_record("greedy", seed, 0.5), [])
    paths = write_leaderboard(tmp_path, "arith")
    assert paths[-1].name == "arith_curves.png" and paths[-1].stat().st_size > 1000
    curves = learning_curves([fake_record("gfn", s, 0.5, learning_curve=[
        {"batches": 0, "reward_evals": 0, "wall_s": 0.0, "js_exact": 0.5, "tv_exact": 0.9 - s}]) for s in (0, 1)])
    assert sorted(curves) == ["js_exact", "tv_exact"] and list(curves["tv_exact"]) == ["gfn"]   # every metric
    assert sorted(curves["tv_exact"]["gfn"]["tv_exact"]) == pytest.approx([-0.1, 0.9])


def test_seed_question_bootstrap_by_hand():
    # one seed, questions worth 0 and 1: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4
    mean, lo, hi = seed_question_bootstrap(np.array([[0.0, 1.0]]))
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)
    # identical seeds and questions: no spread at all
    assert seed_question_bootstrap(np.full((3, 5), 0.25)) == (0.25, 0.25, 0.25)
    # against an explicit index loop with independent draws (Monte Carlo: agree to ~0.01)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 40)) + np.array([[0.0], [0.5], [1.0]])
    loop = []
    for _ in range(4000):
        s_idx, q_idx = rng.integers(0, 3, 3), rng.integers(0, 40, 40)
        loop.append(x[s_idx][:, q_idx].mean())
    want = np.quantile(loop, [0.025, 0.975])
    _, lo, hi = seed_question_bootstrap(x)
    assert lo == pytest.approx(want[0], abs=0.03) and hi == pytest.approx(want[1], abs=0.03)


def test_summarize_resamples_questions_when_records_carry_them():
    records = []
    for seed, shift in zip(SEEDS, (0.0, 0.1, 0.2)):
        r = fake_record("gfn", seed, 0.0)
        values = [shift + q / 10 for q in range(8)]
        r["metrics"] = {"test": {"accuracy": float(np.mean(values)), "tv_exact": 0.5}}
        r["per_question"] = {"test": {"ids": [f"q{i}" for i in range(8)], "accuracy": values}}
        records.append(r)
    df = summarize(records).set_index("metric")
    acc, tv = df.loc["accuracy"], df.loc["tv_exact"]
    assert acc["ci"] == "seeds x questions" and acc["n_questions"] == 8
    matrix = np.array([[s + q / 10 for q in range(8)] for s in (0.0, 0.1, 0.2)])
    assert (acc["mean"], acc["lo"], acc["hi"]) == pytest.approx(seed_question_bootstrap(matrix))
    assert acc["hi"] - acc["lo"] > 0.3          # question spread (0 to 0.7) dominates the seed spread (0.2)
    assert tv["ci"] == "seeds" and tv["n_questions"] == 0


# --------------------------------------------------------------------------- damaged records

def _set_metrics_empty(path):
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "metrics": {}}))


def _set_metric_text(path):
    text = path.read_text()
    path.write_text(text.replace('"accuracy": 0.3,', '"accuracy": "oops",', 1))


def _break_utf8(path):
    data = path.read_bytes()
    path.write_bytes(data[:18] + b"\xff" + data[19:])


def _drop_seed(path):
    record = json.loads(path.read_text())
    del record["seed"]
    path.write_text(json.dumps(record))


# (damage, words the one error line must hold after the file's name)
DAMAGE = [(_set_metrics_empty, "has metrics {}, not a non-empty object"),
          (_set_metric_text, "has metric 'accuracy' on split 'test_3op' = \"oops\", not a finite number"),
          (_break_utf8, "is not UTF-8 text (byte 0xff at offset 18)"),
          (_drop_seed, "lacks seed")]


@pytest.mark.parametrize("damage, words", DAMAGE, ids=["empty metrics", "non-numeric metric", "invalid UTF-8",
                                                       "missing seed key"])
def test_a_damaged_record_stops_the_table_in_one_line_naming_the_file(damage, words, tmp_path, capsys):
    """The committed table is never rebuilt without a seed or stopped by a traceback: one line names the file,
    what is wrong and the fix; exit 2; the old table files keep their bytes and nothing new appears."""
    from gfnbench.cli import main

    write_fake_runs(tmp_path)
    write_leaderboard(tmp_path, "arith")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    damaged = run_dir(tmp_path, "arith", "greedy", 0) / "record.json"
    damage(damaged)
    with pytest.raises(SystemExit) as exc:
        main(["leaderboard", "--task", "arith", "--results_dir", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"gfnbench: error: {damaged} {words}"), lines[0]
    assert "delete that run folder" in lines[0] and "--skip_damaged true" in lines[0]
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_skip_damaged_tables_the_rest_and_names_what_it_left_out(tmp_path, capsys):
    from gfnbench.cli import main

    write_fake_runs(tmp_path)
    _set_metrics_empty(run_dir(tmp_path, "arith", "greedy", 0) / "record.json")
    main(["leaderboard", "--task", "arith", "--results_dir", str(tmp_path), "--skip_damaged", "true"])
    md = (tmp_path / "arith.md").read_text()
    assert ("- left out (damaged records, --skip_damaged true): runs/arith/greedy/seed0/record.json (has metrics "
            "{}, not a non-empty object {split: {metric: number}})\n") in md
    mean, lo, hi = bootstrap_ci(METHODS["greedy"][1:])      # seeds 1 and 2 only
    assert f"| greedy | {format_cell(mean, lo, hi)} (n=2) |" in md.split("## accuracy")[1]


def test_a_sound_table_has_no_left_out_line(tmp_path):
    write_fake_runs(tmp_path)
    assert "left out" not in write_leaderboard(tmp_path, "arith")[0].read_text()
