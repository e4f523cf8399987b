"""Few-shot settings in one place: how many demonstrations the few_shot row puts before a prompt, and which
prompt they make (the prompting rows and the pre-flight length check both ask here).
"""
from __future__ import annotations

from gfnbench.tasks.base import Example, LabelledClassification, Task

FEW_SHOT_K = 3      # the few_shot row's demonstrations on a task that does not set its own (the paper's 3-shot)


def few_shot_k(task: Task) -> int:
    """Demonstrations of the few_shot row: a label task's own `few_shot_k` when it sets one (subj: all its
    labelled examples, as the paper's 10/20/50-shot rows), else FEW_SHOT_K."""
    own = task.few_shot_k if isinstance(task, LabelledClassification) else None
    return own or FEW_SHOT_K


def shots_prompt(task: Task, ex: Example, k: int) -> str:
    """The k-shot prompt of a prompting row: a label task's classifier prompt (the row is a direct classifier),
    else the task's chain-of-thought demonstrations."""
    if isinstance(task, LabelledClassification):
        return task.classifier_prompt(ex, k)
    return task.shots_prompt(ex, k)
