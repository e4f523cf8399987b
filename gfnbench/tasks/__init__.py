"""Task registry: importing this package registers every built-in task."""
from gfnbench.tasks import arith, continuation, infill, rng, subj  # noqa: F401
from gfnbench.tasks.base import TASKS, Example, Task, register_task  # noqa: F401
from gfnbench.tasks.lookup import get_task, get_task_class, load_task_file  # noqa: F401
