"""APScheduler jobs: post batches every N seconds (or at once when M leaves
wait), finalize due batches, refresh nodes. Each job runs alone (max one
instance); a failure is logged and the next run tries again."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("opinfer.coordinator.scheduler")


class Jobs:
    def __init__(self, coordinator):
        self.c = coordinator
        s = coordinator.settings
        self.scheduler = BackgroundScheduler(timezone=timezone.utc,
                                             job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": 30})
        self.scheduler.add_job(self._safe(coordinator.post_batches), "interval", seconds=s.batch_interval_s,
                               id="post")
        self.scheduler.add_job(self._safe(coordinator.finalize), "interval", seconds=s.finalize_interval_s,
                               id="finalize")
        self.scheduler.add_job(self._safe(coordinator.refresh_nodes), "interval", seconds=s.node_refresh_s,
                               id="nodes")

    @staticmethod
    def _safe(fn):
        def run():
            try:
                fn()
            except Exception:  # noqa: BLE001 - keep the schedule alive; the next run retries
                log.exception("%s failed", fn.__name__)
        run.__name__ = fn.__name__
        return run

    def start(self) -> None:
        self.scheduler.start()

    def post_now(self) -> None:
        """Run the batch job as soon as possible (M leaves are waiting)."""
        try:
            self.scheduler.modify_job("post", next_run_time=datetime.now(timezone.utc))
        except Exception:  # noqa: BLE001 - scheduler shutting down
            pass

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
