"""The method layer's structure: one base for the trained modules, no method importing another, `trains` stated
once, interfaces free of implementation, frozen shape-checked trajectories, one few-shot rule, one sft settings
class."""
from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from gfnbench.catalog import all_methods, get_method
from gfnbench.methods import RunContext
from gfnbench.models import build_tiny
from gfnbench.profiles import PROFILES
from gfnbench.trained import TrainedModule
from gfnbench.trajectories import make_trajectories

ROOT = Path(__file__).resolve().parents[1]
SMOKE = PROFILES["smoke"]
TRAINED_ROWS = ("gflownet", "gflownet_tb", "ppo", "grpo", "flowrl", "tb_vargrad")


def method_files() -> dict[str, Path]:
    files = {"gfnbench.gflownet": ROOT / "gfnbench" / "gflownet.py"}
    files |= {f"gfnbench.baselines.{f.stem}": f for f in (ROOT / "gfnbench" / "baselines").glob("*.py")
              if f.stem != "__init__"}
    return files | {f"examples.{f.stem}": f for f in (ROOT / "examples").glob("*.py")}


def registers_a_method(file: Path) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "register_method"
               for n in ast.walk(ast.parse(file.read_text())))


# ------------------------------------------------------------------------------------------------ structure
# (module sizes, cycles, method and interface imports: tests/test_seams.py)

def test_trains_is_stated_once_by_the_method_class():
    for file in method_files().values():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_method":
                assert "trains" not in {k.arg for k in node.keywords}, f"{file.name} repeats trains= at registration"
    for name, spec in all_methods().items():
        assert spec.trains == spec.factory.trains, name


# ---------------------------------------------------------------------------------------- the trained modules

@pytest.mark.parametrize("method", TRAINED_ROWS)
def test_every_trained_row_module_is_a_trained_module_and_saves_its_stream_and_curve(method):
    from gfnbench.tasks import get_task

    task, lm = get_task("rng"), build_tiny("llama")
    impl = get_method(method).factory(task, lm, RunContext(seed=3, profile=SMOKE))
    module = impl.trained_module()
    assert isinstance(module, TrainedModule)
    assert module.examples == task.examples("train") and module.seed == 3 and module.curve == []
    state = copy.deepcopy(module.training_state())     # as a checkpoint holds it
    assert {"generator", "curve"} <= set(state)
    first = torch.rand(4, generator=module.generator)
    module.curve.append({"step": 0})
    module.load_training_state(state)
    assert torch.equal(torch.rand(4, generator=module.generator), first) and module.curve == []


def test_reinforce_example_gets_the_trained_rows_steps():
    from gfnbench.policy import train_steps
    from gfnbench.tasks import get_task

    task = get_task("rng")
    impl = get_method(str(ROOT / "examples" / "reinforce.py")).factory(task, build_tiny("llama"),
                                                                      RunContext(seed=0, profile=SMOKE))
    gflownet = get_method("gflownet").factory(task, build_tiny("llama"), RunContext(seed=0, profile=SMOKE))
    assert isinstance(impl.trained_module(), TrainedModule)
    assert impl.steps == gflownet.steps == train_steps(task, SMOKE) > SMOKE.train_steps
    assert impl.budget().optimizer_steps == gflownet.budget().optimizer_steps


# ------------------------------------------------------------------------------------------------ trajectories

def test_trajectories_get_rewards_through_a_checked_constructor_and_are_frozen():
    traj = make_trajectories(prompt_ids=[[1, 2], [3]], states=[[5, 6, 7], [8]], pad_id=0)
    rewarded = traj.with_log_reward(torch.zeros(2, 4))
    assert traj.log_reward is None and rewarded.log_reward.shape == (2, 4)
    assert rewarded.select([1]).log_reward.shape == (1, 4)
    with pytest.raises(ValueError, match=r"log_reward must be \[B, L\+1\] = \[2, 4\], got \[2, 3\]"):
        traj.with_log_reward(torch.zeros(2, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        traj.log_reward = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"log_pterm must be \[B, L\+1\] = \[2, 4\], got \[2, 3\]"):
        dataclasses.replace(traj, log_pterm=torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"is_action must be \[B, S\] = \[2, 3\], got \[2, 2\]"):
        dataclasses.replace(traj, is_action=traj.is_action[:, :2])


# --------------------------------------------------------------------------------------------- few-shot, sft

def test_the_few_shot_rule_lives_in_one_place():
    from gfnbench.shots import FEW_SHOT_K, few_shot_k
    from gfnbench.tasks import get_task
    from gfnbench.tasks.subj import Subjectivity

    subj = Subjectivity(data=str(ROOT / "tests" / "fixtures" / "subj"))
    arith = get_task("arith")
    assert few_shot_k(subj) == subj.few_shot_k and few_shot_k(arith) == FEW_SHOT_K
    lm, ctx = build_tiny("llama"), RunContext(seed=0, profile=SMOKE)
    for task in (subj, arith):
        assert get_method("few_shot").factory(task, lm, ctx).k == few_shot_k(task)
        assert get_method("zero_shot").factory(task, lm, ctx).k == 0
    uses = [f.name for f in (ROOT / "gfnbench").rglob("*.py") if ".few_shot_k" in f.read_text()]
    assert sorted(uses) == ["shots.py", "subj.py"], uses      # subj sets it; only shots.py reads it
