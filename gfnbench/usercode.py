"""Errors raised by a user's task or method file, as one line that names the file and the line."""
from __future__ import annotations

import traceback
from pathlib import Path


def user_code_error(err: BaseException, file: str | Path) -> str:
    """`file:line: ErrorType: message` for an error raised while importing or running a user's .py file."""
    file = Path(file)
    if isinstance(err, SyntaxError) and err.filename and Path(err.filename).resolve() == file.resolve():
        return f"{file}:{err.lineno}: SyntaxError: {err.msg}"
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename).resolve() == file.resolve():
            line = frame.lineno
    message = " ".join(str(err).split()) or type(err).__name__
    return f"{file}{f':{line}' if line else ''}: {type(err).__name__}: {message}"


def import_user_file(path: str, kind: str, registry: dict) -> list[str]:
    """Import a task or method file from outside the package (`kind`: "task" or "method") and return the names
    it added to `registry`. A file imported before (same path and modification time) is not imported again:
    the pre-flight checks import it first. Any import-time failure is one line naming the file and line."""
    import importlib.util
    import sys

    file = Path(path)
    if file.is_dir():
        raise ValueError(f"{kind} file {path} is a folder; expected a .py file")
    if not file.is_file():
        raise ValueError(f"{kind} file {path} does not exist")
    key = (kind, str(file.resolve()), file.stat().st_mtime_ns)
    if key in _IMPORTED:
        return list(_IMPORTED[key])
    before = set(registry)
    spec = importlib.util.spec_from_file_location(f"gfnbench_user_{kind}_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001  (syntax error, missing import, ...: one line)
        sys.modules.pop(spec.name, None)
        for name in set(registry) - before:
            registry.pop(name, None)
        raise ValueError(f"could not import {kind} file {user_code_error(err, file)}") from None
    _IMPORTED[key] = sorted(set(registry) - before)
    return list(_IMPORTED[key])


_IMPORTED: dict[tuple[str, str, int], list[str]] = {}
