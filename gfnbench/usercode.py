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
