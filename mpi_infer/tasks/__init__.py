"""The tasks a run can score: segmentation and classification. Each owns its head (what the network's raw
output means), its per-image scoring and columns, and its aggregate metrics behind one small protocol, so the
job and the reports ask the task instead of branching on it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Task(Protocol):
    name: str

    def head(self, spec: Any, profile: Any, classes: list[str]) -> Any:
        """The engine's head for this task (engines/heads.py's protocol)."""

    def summarise(self, records: list[Mapping[str, Any]], splits: list[str], classes: list[str], cfg: Any,
                  group_of: Any) -> dict[str, Any]:
        """summary.json's task part: counts, metrics, statistics, per split."""

    def group_row(self, records: list[Mapping[str, Any]]) -> dict[str, Any]:
        """One --group-by group's line."""

    def csv_columns(self, records: list[Mapping[str, Any]]) -> tuple[str, ...]:
        """per_image.csv's columns."""

    def csv_row(self, record: Mapping[str, Any], classes: list[str]) -> Mapping[str, Any]:
        """One record as per_image.csv's row (the columns' values)."""


def task_for(name: str) -> Task:
    from . import classification, segmentation

    return {"segmentation": segmentation.TASK, "classification": classification.TASK}[name]
