"""Safe names and paths: a task or method name becomes a folder and a file name under the results folder, so it
must be one plain path component, and every path the program writes must stay inside that folder.

A leaf (standard library only), so the registries in the interface modules can check names with it.
"""
from __future__ import annotations

import re
from pathlib import Path

SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a task or method name (None when it can): letters, digits, '_', '.' and '-' only,
    and not '.' or '..', so it is one folder name that cannot climb out of the results folder."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not SAFE_NAME.fullmatch(name):
        return "may hold only letters, digits, '_', '.' and '-'"
    if name in (".", ".."):
        return "may not be '.' or '..'"
    return None


def check_name(name: object, kind: str) -> str:
    """`name` itself when it is a safe `kind` ("task" or "method") name; else one-line ValueError saying the fix."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{kind} name {name!r} {problem}: rename the {kind} (e.g. 'my_{kind}'), since its name "
                         f"becomes a folder and file name under the results folder")
    return name


def check_inside(path: str | Path, root: str | Path) -> Path:
    """`path` when it resolves (symbolic links and '..' followed) inside `root`; else one-line ValueError. Called
    where run folders and table files are named, so nothing is ever written outside the results folder."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"refusing to write {path}: it resolves to {resolved}, outside the results folder {base}; "
                         f"use task and method names without '/' or '..'")
    return Path(path)
