"""The monitor: the one place per app where counts, feedback and drift come together.

A single-replica Serve deployment (``monitor``; ``app.Monitor`` wraps :class:`MonitorCore`)
that every router replica talks to off the request path:

- ``push``: a router's delta of request counts and its buffered drift rows, applied exactly once
  per ``(router id, sequence number)`` (a retried push is recognised and ignored);
- ``feedback``: exactly-once acceptance of an outcome (:class:`~.feedback.FeedbackLedger`) and
  its attribution to the (A/B test, variant, version) carried by the signed request id;
- ``stats`` / ``metrics`` / ``drift``: the totals as ``/admin/v1/stats`` JSON, the Prometheus text
  (:mod:`~.metrics`) and the drift tap's report.

Why one replica: the totals and the seen-set must be in one place to be exact across router
replicas (see :mod:`~.metrics` and :mod:`~.feedback`). Its load is small — one call per router
replica per flush interval plus one per feedback — and a restart costs the totals since the
restart (Prometheus handles the counter reset) and feedback for requests served before it.

Pure apart from the profile loader, which is injected (blocking: run it in a thread).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from mlplane.monitoring.profile import Profile
from mlplane.serving.config import AppSettings
from mlplane.serving.drift_tap import DriftTap, Evaluation
from mlplane.serving.feedback import FeedbackLedger, Verdict
from mlplane.serving.metrics import ServingCollector, exposition
from mlplane.serving.request_id import RequestInfo
from mlplane.serving.stats import TrafficStats

__all__ = ["MonitorCore"]

log = logging.getLogger("mlplane.serving.monitor")

#: Router replicas whose last sequence number is remembered (older ones are forgotten first;
#: routers come and go with autoscaling, each with a fresh id).
MAX_ROUTERS = 4096

ProfileLoader = Callable[[int], Profile | None]


class MonitorCore:
    def __init__(
        self,
        settings: AppSettings,
        started_at: float,
        *,
        ledger: FeedbackLedger | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = started_at
        self.stats = TrafficStats()
        self.ledger = ledger or FeedbackLedger(started_at)
        self.tap = DriftTap(settings.drift)
        self.collector = ServingCollector(
            settings.namespace,
            settings.name,
            self.stats,
            self.tap,
            has_slo=settings.slo_latency_p99_ms is not None,
        )
        self._last_seq: OrderedDict[str, int] = OrderedDict()
        #: Reference version the routers currently ask for (None: no drift rows seen yet).
        self.wanted_reference: int | None = None

    def apply_push(self, router_id: str, seq: int, payload: Mapping[str, Any]) -> dict | None:
        """Merge a router's batch once; returns its drift rows to add (None: nothing to add)."""
        last = self._last_seq.get(router_id)
        if last is not None and seq <= last:
            return None  # a retry of a batch already applied
        self._last_seq[router_id] = seq
        self._last_seq.move_to_end(router_id)
        while len(self._last_seq) > MAX_ROUTERS:
            self._last_seq.popitem(last=False)
        self.stats.merge(TrafficStats.from_wire(payload.get("stats") or {}))
        rows = payload.get("drift")
        if not rows or not self.settings.drift.enabled:
            return None
        self.tap.dropped_rows += int(rows.get("dropped", 0))
        if rows.get("reference_version") is not None:
            self.wanted_reference = int(rows["reference_version"])
        return rows if rows.get("timestamps") else None

    def needs_reference(self) -> int | None:
        """The reference version to load, if the tap is not on it yet."""
        wanted = self.wanted_reference
        if wanted is None or wanted == self.tap.reference_version:
            return None
        return wanted

    def load_reference(self, version: int, loader: ProfileLoader) -> None:
        """Load ``version``'s profile (blocking) and point the tap at it; errors propagate."""
        profile = loader(version)
        self.tap.set_reference(version, profile)
        log.info(
            "drift reference: model version %s (%s)",
            version,
            "profile loaded" if profile is not None else "no reference profile",
        )

    def add_rows(self, rows: Mapping[str, Any], now: float) -> list[Evaluation]:
        """Count a batch of drift rows (blocking, vectorised: run it in a thread)."""
        try:
            evaluations = self.tap.add(
                int(rows["reference_version"]), rows["columns"], rows["timestamps"], now
            )
        except Exception:  # a malformed batch must not stop the tap
            log.exception("drift rows could not be counted")
            self.tap.dropped_rows += len(rows.get("timestamps", ()))
            return []
        for ev in evaluations:
            if ev.drifted:
                log.warning("drift in window %s-%s: %s", ev.window_start, ev.window_end, ev.drifted)
        return evaluations

    def feedback(self, info: Mapping[str, Any], value: float, now: float) -> tuple[Verdict, str]:
        request = RequestInfo(
            variant=str(info["variant"]),
            version=int(info["version"]),
            deployment=self.settings.deployment,
            abtest=info.get("abtest"),
            issued_at=float(info["issued_at"]),
            nonce=str(info["nonce"]),
        )
        verdict, reason = self.ledger.record(request, now)
        if verdict == "accepted":
            self.stats.record_outcome(request.abtest, request.variant, request.version, value)
        return verdict, reason

    def stats_report(self, abtest: str | None, all_tests: bool) -> dict[str, Any]:
        return {
            "since": self.started_at,
            "abtests": list(self.stats.abtests()),
            "variants": self.stats.snapshot(abtest, all_tests=all_tests),
        }

    def metrics_text(self) -> bytes:
        return exposition(self.collector)
