"""The seams between core, tasks and methods: a task or a method in one file, typed settings, no import cycles."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from gfnbench.cli import main
from gfnbench.settings import build, coerce, merge, parse_dotted, read_settings_file
from gfnbench.trajectories import make_trajectories

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_TASK = str(ROOT / "examples" / "sort_digits.py")
EXAMPLE_METHOD = str(ROOT / "examples" / "reinforce.py")
EXAMPLE_TEST_TIME = str(ROOT / "examples" / "best_of_n.py")


# ------------------------------------------------------------------------------------- example task and method

def test_readme_example_task_runs_every_applicable_method(tmp_path, capsys):
    from gfnbench.catalog import methods_for
    from gfnbench.tasks import load_task_file

    load_task_file(EXAMPLE_TASK)
    methods = methods_for("sort_digits")
    assert {"gflownet", "ppo", "sft", "greedy", "beam"} <= set(methods)
    for method in methods:
        main(["run", "--task", EXAMPLE_TASK, "--method", method, "--profile", "smoke",
              "--results_dir", str(tmp_path)])
        record = json.loads((tmp_path / "runs" / "sort_digits" / method / "seed0" / "record.json").read_text())
        assert 0.0 <= record["metrics"]["test"]["exact"] <= 1.0
        assert record["task_version"] == "1"


def test_readme_example_method_appears_with_its_budget_in_the_table(tmp_path):
    main(["bench", "--task", "rng", "--methods", f"[{EXAMPLE_METHOD}, greedy]", "--seeds", "[0]",
          "--profile", "smoke", "--results_dir", str(tmp_path), "--reinforce.samples_per_prompt", "3"])
    table = (tmp_path / "rng.md").read_text()
    from gfnbench.profiles import PROFILES
    from gfnbench.tasks import get_task

    # the example is a PromptStepMethod, so it gets every trained row's budget: the profile's train_steps scaled
    # by the task's steps_multiplier (smoke on rng: 3 x 6 = 18), each step prompts_per_step prompts x 3 samples
    smoke = PROFILES["smoke"]
    steps = round(smoke.train_steps * get_task("rng").training.steps_multiplier)
    evaluations = steps * smoke.prompts_per_step * 3
    assert f"reinforce: {steps} steps x 3 samples ({evaluations} reward evaluations)" in table
    assert "| reinforce" in table and "| greedy" in table
    record = json.loads((tmp_path / "runs" / "rng" / "reinforce" / "seed0" / "record.json").read_text())
    assert record["settings"] == {"samples_per_prompt": 3}


def test_best_of_n_example_counts_its_test_reward_calls_and_has_no_exact_metrics(tmp_path):
    from gfnbench.profiles import PROFILES
    from gfnbench.records import read_samples
    from gfnbench.tasks import get_task

    main(["run", "--task", "rng", "--method", EXAMPLE_TEST_TIME, "--profile", "smoke", "--results_dir", str(tmp_path),
          "--best_of_n.candidates", "3"])
    run = tmp_path / "runs" / "rng" / "best_of_n" / "seed0"
    record = json.loads((run / "record.json").read_text())
    questions, samples = len(get_task("rng").examples("test")), PROFILES["smoke"].eval_samples   # 1 prompt, 4 draws
    assert len(read_samples(run)) == questions * samples
    assert record["budget"]["test_reward_calls"] == questions * samples * 3 == 12
    assert (record["budget"]["reward_calls"], record["budget"]["labelled_items"]) == (0, 0)
    assert "tv_exact" not in record["metrics"]["test"] and "valid" in record["metrics"]["test"]
    assert {"tv_exact", "valid_exact", "js_exact"} <= set(record["metrics_na"])
    assert "best of 3 candidates" in record["metrics_na"]["tv_exact"]


def test_best_of_n_keeps_the_best_of_each_block_by_hand():
    import sys

    from gfnbench.catalog import get_method

    module = sys.modules[get_method(EXAMPLE_TEST_TIME).factory.__module__]
    final = torch.tensor([0.0, 2.0, 1.0, -1.0, 5.0, 5.0, 3.0])
    assert module.best_in_blocks([0, 1, 2, 3, 4, 5], final, 3) == [1, 4]
    assert module.best_in_blocks([6, 3], final, 1) == [6, 3]


def test_leave_one_out_advantages_by_hand():
    import sys

    from gfnbench.catalog import get_method

    module = sys.modules[get_method(EXAMPLE_METHOD).factory.__module__]
    got = module.leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0]))
    assert got.tolist() == pytest.approx([1 - 4.0, 2 - 3.5, 6 - 1.5])


# ----------------------------------------------------------------------------------------- typed settings

def test_settings_are_coerced_to_their_declared_types():
    from gfnbench.gflownet import GFlowNetConfig

    cfg = build(GFlowNetConfig, {"lr": 1e-4}, {"lr": "3e-4", "huber_delta": "null", "behaviour_mix": "[1, 0, 0]",
                                                "lora_targets": "[q_proj, v_proj]", "seed_buffer_with_gold": "false"},
                "gflownet")
    assert cfg.lr == 3e-4 and cfg.huber_delta is None and cfg.behaviour_mix == (1.0, 0.0, 0.0)
    assert cfg.lora_targets == ("q_proj", "v_proj") and cfg.seed_buffer_with_gold is False
    assert coerce("7", int) == 7 and coerce(7.0, int) == 7


@pytest.mark.parametrize("overrides, message", [
    ({"bogus": 1}, "gflownet has no setting 'bogus'; its settings: loss, lam, lr,"),
    ({"lr": "fast"}, "gflownet setting lr='fast': expected a number"),
    ({"lora_rank": "sixty-four"}, "gflownet setting lora_rank='sixty-four': expected an integer"),
    ({"lora_rank": 2.5}, "expected an integer"),
    ({"loss": "db"}, "gflownet settings: GFlowNet loss must be 'subtb' or 'tb', got 'db'"),
    ({"behaviour_mix": [0.5, 0.6, 0.0]}, "behaviour_mix must be 3 non-negative probabilities summing to 1"),
    ({"behaviour_mix": [0.5, 0.5]}, "expected a list of 3 values"),
])
def test_bad_settings_are_one_error_naming_key_and_fields(overrides, message):
    from gfnbench.catalog import get_method

    with pytest.raises(ValueError) as err:
        get_method("gflownet").check_settings(overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_method_without_settings_refuses_them_and_nested_settings_work():
    from gfnbench.catalog import get_method

    with pytest.raises(ValueError, match="method greedy takes no settings"):
        get_method("greedy").check_settings({"lr": 1})
    typed = get_method("gflownet_mstep").check_settings({"mstep": {"lr": "1e-3"}, "rationales_per_example": "4"})
    assert typed == {"mstep": {"lr": 1e-3}, "rationales_per_example": 4}
    with pytest.raises(ValueError, match=r"gflownet_mstep.mstep has no setting 'patience'"):
        get_method("gflownet_mstep").check_settings({"mstep": {"patience": 3}})


def test_dotted_arguments_and_settings_files(tmp_path):
    rest, dotted = parse_dotted(["run", "--gflownet.lr", "3e-4", "--seed", "1", "--ppo.iterations=5",
                                 "--gflownet_mstep.mstep.lr", "1e-3"], reserved=set())
    assert rest == ["run", "--seed", "1"]
    assert dotted == {"gflownet": {"lr": "3e-4"}, "ppo": {"iterations": "5"},
                      "gflownet_mstep": {"mstep": {"lr": "1e-3"}}}
    file = tmp_path / "s.yaml"
    file.write_text("gflownet: {lr: 0.001, lam: 0.9}\nppo:\n  iterations: 2\n")
    assert merge(read_settings_file(str(file)), dotted)["gflownet"] == {"lr": "3e-4", "lam": 0.9}
    file.write_text("- just a list\n")
    with pytest.raises(ValueError, match="must map method names to their settings"):
        read_settings_file(str(file))


def test_cli_settings_errors_are_one_line_before_any_work(tmp_path, capsys):
    for argv, message in [(["--gflownet.bogus", "1"], "gflownet has no setting 'bogus'"),
                          (["--ppo.lr", "1"], "settings given for ppo, but this run is gflownet")]:
        with pytest.raises(SystemExit) as exit_:
            main(["run", "--task", "rng", "--method", "gflownet", "--profile", "smoke",
                  "--results_dir", str(tmp_path / "r"), *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_trained_methods_get_the_same_reward_budget():
    from gfnbench.catalog import get_method
    from gfnbench.methods import RunContext
    from gfnbench.models import load_model
    from gfnbench.profiles import PROFILES
    from gfnbench.tasks import get_task

    task, ctx = get_task("rng"), RunContext(seed=0, profile=PROFILES["smoke"])
    budgets = {m: get_method(m).factory(task, load_model("tiny"), ctx).budget() for m in ("gflownet", "ppo")}
    steps = round(PROFILES["smoke"].train_steps * task.training.steps_multiplier)
    assert budgets["gflownet"].reward_evaluations == budgets["ppo"].reward_evaluations == \
        steps * PROFILES["smoke"].samples_per_prompt


# ------------------------------------------------------------------------------------------- trajectories

def test_make_trajectories_checks_shapes():
    traj = make_trajectories(prompt_ids=[[1, 2], [3]], states=[[5, 6, 7], [8]], pad_id=0,
                             is_action=[[True, False, True], [True]], log_reward=torch.zeros(2, 3))
    assert traj.lengths.tolist() == [2, 1] and traj.state_ends().tolist() == [[0, 2, 3], [0, 1, 1]]
    with pytest.raises(ValueError, match=r"log_reward must be \[B, L\+1\] = \[2, 3\], got \[2, 2\]"):
        make_trajectories(prompt_ids=[[1], [3]], states=[[5, 6], [8]], pad_id=0, log_reward=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="row 0 has 2 state tokens but 1 is_action flags"):
        make_trajectories(prompt_ids=[[1]], states=[[5, 6]], pad_id=0, is_action=[[True]])


# ----------------------------------------------------------------------------------------------- structure

def test_no_function_over_60_lines_in_core():
    long = []
    for file in all_module_files().values():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{file.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_core_never_probes_tasks_with_hasattr():
    """Every hook a task may implement is declared on Task (gfnbench/tasks/base.py), so core code calls it directly."""
    offenders = []
    for file in all_module_files().values():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr") and \
                    "task" in ast.unparse(node.args[0]):
                offenders.append(f"{file.name}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, offenders


def test_bench_runs_deterministic_methods_once(tmp_path):
    from gfnbench.catalog import get_method

    assert get_method("greedy").deterministic and get_method("beam").deterministic
    assert not get_method("temperature").deterministic and not get_method("gflownet").deterministic
    main(["bench", "--task", "rng", "--methods", "[greedy, temperature]", "--seeds", "[0, 1]", "--profile", "smoke",
          "--results_dir", str(tmp_path)])
    runs = tmp_path / "runs" / "rng"
    assert sorted(p.name for p in (runs / "greedy").iterdir()) == ["seed0"]
    assert sorted(p.name for p in (runs / "temperature").iterdir()) == ["seed0", "seed1"]
    assert "deterministic rows (no sampling, no training) run once" in (tmp_path / "rng.md").read_text()


# ------------------------------------------------------------------------------------- the house's four rules

MAX_MODULE_LINES = 450
INTERFACES = {"gfnbench.tasks.base", "gfnbench.methods", "gfnbench.trajectories", "gfnbench.sampling.config",
              "gfnbench.settings",   # the typed-settings schema a Method declares; like the rest, a leaf
              "gfnbench.names"}      # the rule a task or method name obeys (standard library only)


def all_module_files() -> dict[str, Path]:
    """Every module under gfnbench/, at any depth, by dotted name."""
    out = {}
    for file in (ROOT / "gfnbench").rglob("*.py"):
        parts = file.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return out


def runtime_imports(file: Path, known: set[str]) -> set[str]:
    """Package modules a file imports at run time (any depth; `if TYPE_CHECKING:` blocks left out)."""
    tree = ast.parse(file.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or ({node.module} & known)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of a directed graph as a path, or [] (depth-first search)."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return []


def folder_of(module: str, files: dict[str, Path]) -> str:
    """A sub-package is one node of the folder graph; a top-level module is a node of its own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or files[module].name == "__init__.py" and len(parts) == 2 \
        else module


def method_modules(files: dict[str, Path]) -> set[str]:
    """Modules that register a method: a method module, which another method module may not import."""
    return {m for m, f in files.items() if "@register_method(" in f.read_text()}


def test_no_module_over_450_lines():
    long = {m: n for m, f in all_module_files().items() if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_no_import_cycle_between_modules_or_folders():
    files = all_module_files()
    graph = {m: runtime_imports(f, set(files)) - {m} for m, f in files.items()}
    # a package's __init__ that re-exports its own modules is the package itself, not a cycle through them
    graph = {m: {n for n in deps if not n.startswith(m + ".") or files[m].name != "__init__.py"}
             for m, deps in graph.items()}
    assert not (cycle := find_cycle(graph)), " -> ".join(cycle)
    folders: dict[str, set[str]] = {}
    for module, deps in graph.items():
        src = folder_of(module, files)
        folders.setdefault(src, set()).update(folder_of(d, files) for d in deps)
    folders = {k: v - {k} for k, v in folders.items()}
    assert not (cycle := find_cycle(folders)), " -> ".join(cycle)


def test_no_method_module_imports_another():
    files = all_module_files()
    methods = method_modules(files)
    assert {"gfnbench.gflownet", "gfnbench.baselines.ppo", "gfnbench.baselines.decoding"} <= methods
    offenders = {m: sorted(runtime_imports(files[m], methods) - {m}) for m in methods}
    examples = {f.name: sorted(runtime_imports(f, methods)) for f in (ROOT / "examples").glob("*.py")}
    assert not {k: v for k, v in {**offenders, **examples}.items() if v}


def test_interface_modules_import_no_implementation():
    files = all_module_files()
    assert set(files) >= INTERFACES
    offenders = {m: sorted(runtime_imports(files[m], set(files)) - INTERFACES) for m in INTERFACES}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_structure_checks_can_fail():
    """The checks above see what they must: a cycle, a folder cycle and a method import, built by hand."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    files = all_module_files()
    assert folder_of("gfnbench.tasks.arith", files) == "gfnbench.tasks"
    assert folder_of("gfnbench.tasks", files) == "gfnbench.tasks"
    assert folder_of("gfnbench.metrics", files) == "gfnbench.metrics"
    assert "gfnbench.metrics" in runtime_imports(files["gfnbench.tasks.arith"], set(files))
