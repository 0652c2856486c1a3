"""Tasks: the data side of a run and its evaluator, independent of the method that trains.

`TASKS` maps `config.task` to its class: 'toy' (2-D toys and point files, `toy.py`) and
'image' (TFDS image datasets, `images.py`). A task gives a method its data (`draw` inside
the step, or `host_batch` from the host), maps samples to the user's coordinates
(`to_user`) and scores a sampler with the same evaluator for every method.
"""

from __future__ import annotations

from drift_jax.tasks.images import ImageTask
from drift_jax.tasks.toy import ToyTask

TASKS = {'toy': ToyTask, 'image': ImageTask}


def task_class(name: str):
    """The task class for `config.task`; ValueError naming the choices for an unknown one."""
    if name not in TASKS:
        raise ValueError(f'task={name!r} is unknown; choose one of {tuple(TASKS)}.')
    return TASKS[name]
