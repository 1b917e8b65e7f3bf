"""The tasks a run can score: segmentation and classification. Each owns its head (what the network's raw
output means), its per-image scoring and columns, and its aggregate metrics behind one small protocol, so the
job asks the task instead of branching on it. Tasks are pure scoring: they store nothing and draw nothing (the
gather, outputs/results.py and outputs/report.py do, reading the summary's ``task``)."""

from __future__ import annotations

from .protocol import ScoreOptions, Task

__all__ = ["ScoreOptions", "Task", "task_for"]


def task_for(name: str) -> Task:
    from . import classification, segmentation

    return {"segmentation": segmentation.TASK, "classification": classification.TASK}[name]
