"""Finding a task by name, or by the path of a task file outside the package (imported on first use).

Kept apart from `tasks/base.py` so the task interface imports no implementation.
"""
from __future__ import annotations

from gfnbench.tasks.base import TASKS, Task
from gfnbench.usercode import import_user_file


def load_task_file(path: str) -> list[str]:
    """Import a task file that lives outside the package; its @register_task classes join the registry."""
    return import_user_file(path, "task", TASKS)


def get_task(name: str, **kwargs) -> Task:
    """A registered task by name, or the task defined in a .py file (`path/to/task.py`)."""
    return get_task_class(name)(**kwargs)


def get_task_class(name: str) -> type[Task]:
    """The task's class, importing a task file when given one, without constructing the task."""
    if name.endswith(".py"):
        added = load_task_file(name)
        if len(added) != 1:
            raise ValueError(f"{name} must register exactly one task with @register_task, found {added}")
        name = added[0]
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} "
                         f"(or a path to a task .py file)")
    return TASKS[name]
