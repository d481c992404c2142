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
replica per flush interval plus one per feedback. With a state directory (``args.state_dir``)
it saves every acknowledged change first (:mod:`~.journal`) and a restart takes the totals,
the feedback ledger and its count epoch back; without one, a restart starts a new epoch from
zero (the operator keeps what it had read in the ABTest status).

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
from mlplane.serving.journal import Journal, new_epoch
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
    """Totals, the feedback ledger and the drift tap; with a :class:`Journal`, saved state.

    ``epoch`` names this incarnation of the counts: restored with the saved state, new when
    there is none (the operator folds a closed epoch's totals into the ABTest status).
    """

    def __init__(
        self,
        settings: AppSettings,
        started_at: float,
        *,
        ledger: FeedbackLedger | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = started_at
        self.stats = TrafficStats()
        self.ledger = ledger or FeedbackLedger(started_at)
        self.epoch = new_epoch()
        self.journal = journal
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
        #: Records replayed from the journal at start (for the log and tests).
        self.replayed = 0
        if journal is not None:
            self._restore(journal)

    # --- saved state ------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "epoch": self.epoch,
            "since": self.started_at,
            "stats": self.stats.to_wire(),
            "routers": list(self._last_seq.items()),
            "ledger": self.ledger.to_state(),
        }

    def _restore(self, journal: Journal) -> None:
        """Take back the saved state (snapshot, then journal), then save a fresh snapshot.

        State that cannot be read (a damaged or foreign file) is set aside, not fatal: the
        monitor starts a new epoch from zero (the operator keeps the old epoch's totals), where
        failing would keep the whole app from serving."""
        try:
            self._replay(journal)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = journal.set_aside()
            log.error(
                "the saved counts in %s cannot be read (%r): set aside as %s; counting starts "
                "afresh in a new epoch",
                journal.directory,
                exc,
                aside,
            )
            self.epoch = new_epoch()
            self.stats = self.collector.stats = TrafficStats()
            self.ledger = FeedbackLedger(self.started_at)
            self._last_seq = OrderedDict()
            self.replayed = 0
        journal.save_snapshot(self._snapshot())

    def _replay(self, journal: Journal) -> None:
        snapshot, records = journal.load()
        if snapshot is not None:
            self.epoch = str(snapshot["epoch"])
            self.started_at = float(snapshot["since"])
            self.stats = TrafficStats.from_wire(snapshot["stats"])
            self.collector.stats = self.stats
            self._last_seq = OrderedDict((str(r), int(q)) for r, q in snapshot["routers"])
            self.ledger.restore(snapshot["ledger"])
        for record in records:
            kind = record.get("t")
            if kind == "push":
                self._apply_stats(str(record["r"]), int(record["s"]), record["stats"])
            elif kind == "fb":
                self._count_outcome(record["i"], float(record["v"]), float(record["at"]))
            self.replayed += 1
        log.info(
            "counts epoch %s: %s (%d journal records replayed)",
            self.epoch,
            "restored from the saved state" if snapshot is not None else "new (no saved state)",
            self.replayed,
        )

    def _save(self, record: dict[str, Any]) -> bool:
        """Write one record before applying and acknowledging its change (see
        :mod:`~.journal`); True when the journal is due for compaction, which the caller does
        with :meth:`_compact` once the change is applied (a snapshot taken before would miss
        it, and the compaction truncates the journal that holds it)."""
        return self.journal is not None and self.journal.append(record)

    def _compact(self) -> None:
        if self.journal is not None:
            self.journal.save_snapshot(self._snapshot())

    def _apply_stats(self, router_id: str, seq: int, wire: Mapping[str, Any]) -> bool:
        last = self._last_seq.get(router_id)
        if last is not None and seq <= last:
            return False  # a retry of a batch already applied
        self._last_seq[router_id] = seq
        self._last_seq.move_to_end(router_id)
        while len(self._last_seq) > MAX_ROUTERS:
            self._last_seq.popitem(last=False)
        self.stats.merge(TrafficStats.from_wire(wire))
        return True

    def _count_outcome(
        self, info: Mapping[str, Any], value: float, now: float
    ) -> tuple[Verdict, str, RequestInfo]:
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
        return verdict, reason, request

    def apply_push(self, router_id: str, seq: int, payload: Mapping[str, Any]) -> dict | None:
        """Merge a router's batch once; returns its drift rows to add (None: nothing to add).

        With a journal the batch is saved before it is applied: a failed write raises, the
        push fails, and the router re-sends the batch."""
        last = self._last_seq.get(router_id)
        if last is not None and seq <= last:
            return None  # a retry of a batch already applied
        wire = payload.get("stats") or {}
        compact = self._save({"t": "push", "r": router_id, "s": seq, "stats": wire})
        self._apply_stats(router_id, seq, wire)
        if compact:
            self._compact()
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
        """Count an outcome once; with a journal, saved before it is acknowledged (a failed
        write forgets the id again and raises: the client's retry can still be counted)."""
        if self.journal is None:
            verdict, reason, _ = self._count_outcome(info, value, now)
            return verdict, reason
        request = RequestInfo(
            variant=str(info["variant"]),
            version=int(info["version"]),
            deployment=self.settings.deployment,
            abtest=info.get("abtest"),
            issued_at=float(info["issued_at"]),
            nonce=str(info["nonce"]),
        )
        verdict, reason = self.ledger.record(request, now)
        if verdict != "accepted":
            return verdict, reason
        try:
            compact = self._save({"t": "fb", "i": dict(info), "v": value, "at": now})
        except Exception:
            self.ledger.discard(request.nonce)
            raise
        self.stats.record_outcome(request.abtest, request.variant, request.version, value)
        if compact:
            self._compact()
        return verdict, reason

    def stats_report(self, abtest: str | None, all_tests: bool) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "since": self.started_at,
            "abtests": list(self.stats.abtests()),
            "variants": self.stats.snapshot(abtest, all_tests=all_tests),
        }

    def metrics_text(self) -> bytes:
        return exposition(self.collector)
