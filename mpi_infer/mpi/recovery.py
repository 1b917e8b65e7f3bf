"""Rank 0's book of a ``--fault-tolerant`` run: what each rank was handed, which ranks were lost, what they had
finished (their ledgers on the shared volume say), and how their unfinished images are split among the
survivors. No MPI here: job.py tells it who was lost and when the survivors are idle.
"""

from __future__ import annotations

import time
from typing import Any

from ..data.worklist import WorkList
from ..outputs.ledger import complete_images, ledger_path, read_ledger_file


class Recovery:
    def __init__(self, out: str, attempt: int, hosts: list[str], outputs_per_image: int = 1) -> None:
        self.out, self.attempt, self.hosts = out, attempt, hosts
        self.outputs_per_image = outputs_per_image  # several models: an image is done with all its records
        self.started = time.monotonic()
        self.assigned: dict[int, list[WorkList]] = {}
        self.lost: dict[int, dict[str, Any]] = {}
        self.lost_records: list[dict[str, Any]] = []  # what the lost ranks finished, from their ledgers
        self.queue: list[WorkList] = []  # their unfinished images, waiting for idle survivors
        self.rerun: list[int] = []
        self.rounds = 0

    def assign(self, rank: int, work: WorkList) -> None:
        self.assigned.setdefault(rank, []).append(work)

    def lose(self, rank: int) -> dict[str, Any]:
        """Rank ``rank`` is gone: its finished images are those whose every record is in its ledger (a torn last
        line counts as not written); the rest is queued. Returns what is known of the loss."""
        records = read_ledger_file(ledger_path(self.out, self.attempt, rank))
        done = complete_images(records, self.outputs_per_image)
        records = [rec for rec in records if rec["index"] in done]
        pending = WorkList.pending(self.assigned.get(rank, []), done)
        self.lost_records.extend(records)
        if len(pending):
            self.queue.append(pending)
        self.lost[rank] = {"rank": rank, "host": self.hosts[rank], "images_done": len(done),
                           "images_failed": sum(rec["status"] == "failed" for rec in records) // self.outputs_per_image,
                           "images_rerun": len(pending), "detected_after_s": round(time.monotonic() - self.started, 3)}
        return self.lost[rank]

    def hand_out(self, survivors: list[int]) -> list[WorkList]:
        """The queued images split among ``survivors`` (rank 0 first), contiguous, as even as counts allow (a
        volume kept whole); each share is recorded as assigned, so a survivor lost later gives back what it did
        not finish."""
        work = WorkList.pending(self.queue, set())
        self.queue = []
        self.rounds += 1
        self.rerun.extend(work.indices)
        share = -(-len(work) // len(survivors))
        cuts = [0, *(work.unit_end(k * share) for k in range(1, len(survivors))), len(work)]  # volumes whole
        parts = [work.slice(cuts[k], cuts[k + 1]) for k in range(len(survivors))]
        for rank, part in zip(survivors, parts):
            self.assign(rank, part)
        return parts

    def summary(self, enabled: bool) -> dict[str, Any]:
        """summary.json's ``fault_tolerance``."""
        lost = [{k: v for k, v in x.items() if k != "images_failed"} for x in
                sorted(self.lost.values(), key=lambda x: x["rank"])]
        return {"enabled": enabled, "lost_ranks": lost, "rerun_images": len(self.rerun),
                "rerun_indices": sorted(self.rerun), "recovery_rounds": self.rounds}
