"""Every method a run can name: the built-in ones (imported here, so importing registers them) and method files.

Kept apart from `methods.py` so that method modules import the interface without importing each other.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from gfnbench.methods import METHODS, MethodSpec
from gfnbench.usercode import user_code_error


def load_builtin_methods() -> None:
    import gfnbench.baselines  # noqa: F401  (importing registers)
    import gfnbench.gflownet  # noqa: F401


def load_method_file(path: str) -> str:
    """Import a method file from outside the package; it must register exactly one method."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"method file {path} does not exist" if not file.exists() else
                         f"method file {path} is a folder; expected a .py file")
    before = set(METHODS)
    spec = importlib.util.spec_from_file_location(f"gfnbench_user_method_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001  (any import-time failure of a user file is one line)
        sys.modules.pop(spec.name, None)
        raise ValueError(f"could not import method file {user_code_error(err, file)}") from None
    added = sorted(set(METHODS) - before)
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
