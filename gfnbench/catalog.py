"""Every method a run can name: the built-in ones (imported here, so importing registers them) and method files.

Kept apart from `methods.py` so that method modules import the interface without importing each other.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from gfnbench.methods import METHODS, MethodSpec
from gfnbench.usercode import import_user_file
from gfnbench.warm_start import register_warm_started

# Importing a method module registers its rows; this order is the order of the rows in listings and tables.
BUILTIN_METHOD_MODULES = ("gfnbench.baselines.decoding", "gfnbench.baselines.flowrl", "gfnbench.baselines.grpo",
                          "gfnbench.gflownet", "gfnbench.baselines.mstep", "gfnbench.baselines.ppo",
                          "gfnbench.baselines.prompting", "gfnbench.baselines.sft", "gfnbench.baselines.tb_vargrad")


def load_builtin_methods() -> None:
    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)
    register_warm_started()     # sft_gflownet, sft_ppo, ...: rows above started from SFT (after them in tables)


def load_method_file(path: str) -> str:
    """Import a method file from outside the package; it must register exactly one method."""
    added = import_user_file(path, "method", METHODS)
    if len(added) != 1:
        raise ValueError(f"{path} must register exactly one method with @register_method, found {added}")
    return added[0]


def method_name(name: str) -> str:
    """The registered name for a method name or a method file path."""
    load_builtin_methods()
    if name.endswith(".py"):
        registered = [n for n, s in METHODS.items() if _source(s) == Path(name).resolve()]
        return registered[0] if registered else load_method_file(name)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)} "
                         f"(or a path to a method .py file)")
    return name


def _source(spec: MethodSpec) -> Path | None:
    module = sys.modules.get(spec.factory.__module__)
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def get_method(name: str) -> MethodSpec:
    """A registered method by name, or the method defined in a .py file (`path/to/method.py`)."""
    return METHODS[method_name(name)]


def all_methods() -> dict[str, MethodSpec]:
    load_builtin_methods()
    return dict(METHODS)


def methods_for(task: str) -> list[str]:
    load_builtin_methods()
    return [m for m, spec in METHODS.items() if spec.applies_to(task)]
