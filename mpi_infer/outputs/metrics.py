"""What an operator sees without reading pod logs: ``--metrics-file PATH``, a Prometheus text file (a node
exporter's textfile collector, or any scraper, reads it), rewritten atomically by rank 0 every few seconds and
at the end; and/or ``--pushgateway URL``: the same metrics pushed to a Prometheus Pushgateway (the pattern for
batch jobs a scraper may never catch alive), grouped by job and run. Low cardinality: no per-image label, one
``rank`` label on the per-rank rate only."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

EVERY_S = 5.0


class MetricsFile:
    """Rank 0's run metrics, written with prometheus-client's ``write_to_textfile`` (a temporary file renamed
    over the path: a scraper never reads half a file)."""

    def __init__(self, path: str | None, total: int, ranks: int, every_s: float = EVERY_S,
                 push: tuple[str, str, dict[str, str]] | None = None):
        from prometheus_client import CollectorRegistry, Gauge

        self.path, self.total, self.every_s = path, total, every_s
        self.push = push  # (gateway URL, job, grouping key)
        self.push_failed = False
        self.start = time.monotonic()
        self.last = 0.0
        self.registry = CollectorRegistry()

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"mpi_infer_{name}", doc, labels, registry=self.registry)

        self.gauge = gauge
        self.images_total = gauge("images_total", "Images this attempt runs")
        self.images_done = gauge("images_done", "Images finished (scored, predicted or failed)")
        self.images_failed = gauge("images_failed", "Images whose record is failed")
        self.eta = gauge("eta_seconds", "Estimated seconds to the end of inference")
        self.rate = gauge("rank_images_per_second", "Images per second of each rank", ("rank",))
        self.stalled = gauge("ranks_stalled", "Ranks that sent nothing for half the stall timeout or more")
        self.lost = gauge("ranks_lost", "Ranks lost under --fault-tolerant")
        self.stage = gauge("stage_seconds", "Seconds spent per stage", ("stage",))
        self.images_total.set(total)
        for r in range(ranks):
            self.rate.labels(rank=str(r)).set(0)

    def update(self, rank_counts: Mapping[int, tuple[int, int]], stalled: int = 0, lost: int = 0,
               force: bool = False) -> None:
        """Counts as rank 0 knows them; written at most every ``every_s`` seconds unless ``force``."""
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        done = sum(d for d, _ in rank_counts.values())
        self.images_done.set(done)
        self.images_failed.set(sum(f for _, f in rank_counts.values()))
        rate = done / elapsed
        self.eta.set((self.total - done) / rate if rate > 0 else float("inf"))
        for r, (d, _) in rank_counts.items():
            self.rate.labels(rank=str(r)).set(d / elapsed)
        self.stalled.set(stalled)
        self.lost.set(lost)
        self.stage.labels(stage="inference").set(elapsed)
        self._write()

    def finish(self, summary: Mapping[str, Any], code: int) -> None:
        """The run's end: summary.json's counts and timings, the exit code, and the success time on exit 0."""
        images = summary.get("images", {})
        timings = summary.get("timings", {})
        self.images_done.set(timings.get("images_this_attempt", 0))
        self.images_failed.set(images.get("failed", 0))
        self.eta.set(0)
        self.stage.labels(stage="prepare").set(timings.get("prepare_s", 0))
        self.stage.labels(stage="total").set(timings.get("total_s", 0))
        self.gauge("exit_code", "The run's exit code (absent while it runs)").set(code)
        if code == 0:  # absent otherwise: an alert on its age fires for a run that never succeeded
            self.gauge("last_success_timestamp_seconds", "When the run finished with exit 0").set_to_current_time()
        self._write()

    def _write(self) -> None:
        from prometheus_client import push_to_gateway, write_to_textfile

        if self.path:
            with contextlib.suppress(OSError):  # metrics are for watching: a full or gone volume must not end a run
                write_to_textfile(self.path, self.registry)
        if self.push:
            url, job, grouping = self.push
            try:
                push_to_gateway(url, job=job, registry=self.registry, grouping_key=grouping, timeout=5)
            except OSError as exc:  # an unreachable gateway must not end the run either: said once
                if not self.push_failed:
                    self.push_failed = True
                    import sys

                    sys.stderr.write(f"[rank 0] warning: --pushgateway {url}: cannot push ({exc}); the run goes "
                                     f"on\n")
