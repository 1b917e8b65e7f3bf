"""The tasks a run can score: segmentation and classification. Each owns its head (what the network's raw
output means), its per-image scoring and columns, and its aggregate metrics behind one small protocol, so the
job and the reports ask the task instead of branching on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ScoreOptions:
    """How a batch is scored, beyond the profile: what the run's options ask of the task."""

    masks_dir: str | None = None  # segmentation: write each prediction as a PNG under <out>/masks/
    boundary: tuple[float, str] | None = None  # segmentation: (NSD tolerance, empty policy) for HD95/ASSD/NSD
    score_at: str = "network"  # segmentation: network | original


class Task(Protocol):
    name: str

    def blank_record(self, loaded: Any, rank: int) -> dict[str, Any]:
        """A loaded item's record before scoring (failed and unscored items keep it as it is)."""

    def score_batch(self, batch: Any, probs: Any, records: list[dict[str, Any]], profile: Any,
                    options: ScoreOptions) -> list[str]:
        """Fill the batch's records from the head's output; return the files written (undone if the ledger
        cannot take the records)."""

    def table(self, rank: int, classes: list[str]) -> Any:
        """The compact per-rank store of records for the gather (records.py)."""

    def report_table(self, summary: Mapping[str, Any]) -> str:
        """report.html's results table (HTML)."""

    def report_figures(self, summary: Mapping[str, Any], rows: list[dict[str, str]], run_dir: str, k: int
                       ) -> tuple[list[tuple[str, str, str]], bool]:
        """report.html's figures (title, base64 PNG, id), and whether the predicted masks are there to show."""

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
