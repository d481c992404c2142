"""Preemption evidence per TrainingJob, gathered from pod and node watch events.

One :class:`DisruptionLedger` per operator (in
:class:`~mlplane.operator.handlers.state.OperatorState`): pod and node events of any object
feed it, a TrainingJob's rounds read it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from mlplane.operator.builders import labels as lbl
from mlplane.operator.builders.evidence import (
    Notice,
    node_evidence,
    node_notice,
    pod_disruption,
    pod_notice,
)
from mlplane.operator.reconcile.notice import ObservedNotice
from mlplane.operator.reconcile.trainingjob import ObservedDisruption


def _observed(attempt: int, notice: Notice, pod: str | None) -> ObservedNotice:
    return ObservedNotice(attempt, notice.signal, notice.node, pod, notice.time,
                          notice.window_seconds, notice.deadline)  # fmt: skip


class DisruptionLedger:
    """Preemption evidence per TrainingJob, kept from watch events until status records it.

    Node evidence reaches only the *live* pods on the node (running or pending, not finished,
    not deleted): a pod leaves the ledger when it finishes or is deleted, so a reclaim never
    counts pods of attempts long over. Evidence is keyed as the pure core keys it
    (:meth:`ObservedDisruption.key`: attempt and node), so one reclaim of a node running three
    pods of an attempt is one preemption, whichever of its node taint, node deletion and the
    pods' ``DisruptionTarget`` conditions is seen first.
    """

    #: Reclaimed nodes remembered (a pod event may arrive after its node's): the newest win.
    MAX_NODES = 1000
    #: Reclaim notices kept per TrainingJob (the newest win; status records what it answered).
    MAX_NOTICES = 50

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], dict[tuple[Any, ...], ObservedDisruption]] = {}
        #: Live pods that have a node: (namespace, pod) → (TrainingJob, attempt, node).
        self._live: dict[tuple[str, str], tuple[str, int, str]] = {}
        #: Spot nodes being taken away (or gone) → the reason recorded for their pods.
        self._terminating_nodes: dict[str, str] = {}
        #: Reclaim notices (before the loss) per TrainingJob, by node (or pod), and the nodes
        #: that carry a notice taint now.
        self._notices: dict[tuple[str, str], dict[str, ObservedNotice]] = {}
        self._notice_nodes: dict[str, Notice] = {}

    def pod(self, pod: Mapping[str, Any], *, deleted: bool = False) -> set[tuple[str, str]]:
        """Record a pod's own disruption, and where it runs while it is live (node evidence).

        Returns the (namespace, TrainingJob) that got evidence not seen before: the jobs to
        wake (evidence already held wakes nobody, however often a pod's events repeat it).
        """
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        namespace, job = meta.get("namespace", ""), labels.get(lbl.TRAININGJOB)
        attempt = labels.get(lbl.ATTEMPT, "")
        if not job or not attempt.isdigit():
            return set()
        name = meta.get("name", "")
        new: set[tuple[str, str]] = set()
        node = (pod.get("spec") or {}).get("nodeName")
        over = deleted or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        with self._lock:
            found = pod_disruption(pod)
            if found is not None and self._add(namespace, job, ObservedDisruption(
                    int(attempt), found.reason, found.pod, found.node, found.time)):  # fmt: skip
                new.add((namespace, job))
            notice = pod_notice(pod)
            if (
                notice is not None
                and not over
                and self._notice(namespace, job, _observed(int(attempt), notice, name))
            ):
                new.add((namespace, job))
            if over or not node:
                self._live.pop((namespace, name), None)
                return new
            self._live[namespace, name] = (job, int(attempt), node)
            if node in self._notice_nodes and self._notice(
                namespace, job, _observed(int(attempt), self._notice_nodes[node], name)
            ):
                new.add((namespace, job))
            if node in self._terminating_nodes and self._add(namespace, job, ObservedDisruption(
                    int(attempt), self._terminating_nodes[node], name, node)):  # fmt: skip
                new.add((namespace, job))
        return new

    def node(self, node: Mapping[str, Any], *, deleted: bool = False) -> set[tuple[str, str]]:
        """A spot node that is going away (or went away) disrupts the live pods on it.

        Returns the (namespace, TrainingJob) that got new evidence (see :meth:`pod`).
        """
        evidence = node_evidence(node)
        notice = None if deleted else node_notice(node)
        new: set[tuple[str, str]] = set()
        with self._lock:
            if notice is None:
                self._notice_nodes.pop(evidence.name, None)
            else:
                self._notice_nodes[evidence.name] = notice
                while len(self._notice_nodes) > self.MAX_NODES:
                    del self._notice_nodes[next(iter(self._notice_nodes))]
                for (namespace, pod), (job, attempt, on) in self._live.items():
                    if on == evidence.name and self._notice(
                        namespace, job, _observed(attempt, notice, pod)
                    ):
                        new.add((namespace, job))
            if not evidence.spot or not (evidence.terminating or deleted):
                # Not (or no longer) going away: a NotReady blip that healed disrupts nothing
                # scheduled there later.
                self._terminating_nodes.pop(evidence.name, None)
                return new
            reason = "SpotNodeDeleted" if deleted else f"NodeTerminating:{evidence.taints[0]}"
            self._terminating_nodes.pop(evidence.name, None)
            self._terminating_nodes[evidence.name] = reason
            while len(self._terminating_nodes) > self.MAX_NODES:
                del self._terminating_nodes[next(iter(self._terminating_nodes))]
            for (namespace, pod), (job, attempt, on) in self._live.items():
                if on == evidence.name and self._add(
                    namespace, job, ObservedDisruption(attempt, reason, pod, evidence.name)
                ):
                    new.add((namespace, job))
        return new

    def _notice(self, namespace: str, job: str, notice: ObservedNotice) -> bool:
        """Keep ``notice``; True when it is new (the job is woken to deliver it)."""
        found = self._notices.setdefault((namespace, job), {})
        if notice.key() in found:
            return False
        found[notice.key()] = notice
        while len(found) > self.MAX_NOTICES:
            del found[next(iter(found))]
        return True

    def notices(self, namespace: str, job: str) -> tuple[ObservedNotice, ...]:
        """Reclaim notices seen for a TrainingJob's live pods (the core answers each once)."""
        with self._lock:
            return tuple(self._notices.get((namespace, job), {}).values())

    def _add(self, namespace: str, job: str, disruption: ObservedDisruption) -> bool:
        """Keep ``disruption``; True when it is new (its key was not held)."""
        seen = self._seen.setdefault((namespace, job), {})
        if disruption.key() in seen:
            return False
        seen[disruption.key()] = disruption
        return True

    def take(self, namespace: str, job: str) -> tuple[ObservedDisruption, ...]:
        """Everything seen for a TrainingJob (kept until :meth:`forget`)."""
        with self._lock:
            return tuple(self._seen.get((namespace, job), {}).values())

    def forget(self, namespace: str, job: str, recorded: list[dict[str, Any]]) -> None:
        """Drop evidence the status now holds."""
        with self._lock:
            seen = self._seen.get((namespace, job))
            if not seen:
                return
            for item in recorded:
                seen.pop(ObservedDisruption.from_record(item).key(), None)

    def drop(self, namespace: str, job: str) -> None:
        """Everything of a deleted TrainingJob: a new one of the same name starts clean."""
        with self._lock:
            self._seen.pop((namespace, job), None)
            self._notices.pop((namespace, job), None)
            for key in [k for k, (j, _, _) in self._live.items() if k[0] == namespace and j == job]:
                del self._live[key]
