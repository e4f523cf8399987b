"""Task registry: importing this package registers every built-in task."""
from gfnbench.tasks import arith, continuation, infill, rng, subj  # noqa: F401
from gfnbench.tasks.base import TASKS, Example, Task, get_task, register_task  # noqa: F401
