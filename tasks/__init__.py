"""Task registry: importing this package registers every built-in task."""
from gfnbench.tasks.base import TASKS, Example, Task, get_task, register_task  # noqa: F401
from gfnbench.tasks import arith, rng  # noqa: F401
