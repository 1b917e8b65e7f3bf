"""What every task offers the run (Task) and what the run tells a task about scoring (ScoreOptions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

STATUSES = ("ok", "converted", "unscored", "failed")  # a record's status: scored (the first two) or not
MAX_ERROR_CHARS = 2000  # a record's error text (a 100 kB path in a note must not make a 200 kB CSV row)


@dataclass(frozen=True)
class ScoreOptions:
    """How a batch is scored, beyond the profile: what the run's options ask of the task."""

    masks_dir: str | None = None  # segmentation: write each prediction as a PNG under <out>/masks/
    boundary: tuple[float, str] | None = None  # segmentation: (NSD tolerance, empty policy) for HD95/ASSD/NSD
    score_at: str = "network"  # segmentation: network | original
    bootstrap: int = 2000  # bootstrap replicates for the summary's 95% CIs (0: none)
    seed: int = 0  # the bootstrap's seed


class Task(Protocol):
    name: str

    def blank_record(self, loaded: Any, rank: int) -> dict[str, Any]:
        """A loaded item's record before scoring (failed and unscored items keep it as it is)."""

    def score_batch(self, batch: Any, probs: Any, records: list[dict[str, Any]], profile: Any,
                    options: ScoreOptions) -> list[str]:
        """Fill the batch's records from the head's output; return the files written (undone if the ledger
        cannot take the records)."""

    def head(self, spec: Any, profile: Any, classes: list[str]) -> Any:
        """The engine's head for this task (engines/heads.py's protocol)."""

    def summarise(self, records: list[Mapping[str, Any]], splits: list[str], classes: list[str], profile: Any,
                  options: ScoreOptions, group_of: Any) -> dict[str, Any]:
        """summary.json's task part: counts, metrics, statistics, per split."""

    def check_record(self, record: Mapping[str, Any], classes: list[str]) -> str | None:
        """What is wrong with a record read back from a ledger (--resume), or None: types, finite values in
        range, counts consistent with the scores. A forged or damaged line must not become a result."""

    def group_row(self, records: list[Mapping[str, Any]]) -> dict[str, Any]:
        """One --group-by group's line."""

    def csv_columns(self, records: list[Mapping[str, Any]]) -> tuple[str, ...]:
        """per_image.csv's columns."""

    def csv_row(self, record: Mapping[str, Any], classes: list[str]) -> Mapping[str, Any]:
        """One record as per_image.csv's row (the columns' values)."""
