"""Checkpoint on a reclaim notice: tell the running attempt, then record what it did.

Pure: the TrainingJob core calls :func:`follow_notice` each round with the notices the edge
observed (node taints and pod ``DisruptionTarget`` conditions on Kubernetes, the local
platform's notice files), what the run reports (the notice checkpoint's tags), and whether
the edge delivered the notice this pass.

**The channel** is a small JSON object, :data:`NOTICE_FILE`, in the attempt's own checkpoint
folder (``status.checkpointUri``): the runtime already reads and writes that URI (S3 or a
folder) and knows its attempt, so nothing is opened for it (no Kubernetes API rights for Ray
pods, no port). The runtime reads it at step boundaries, at most every
``NOTICE_POLL_SECONDS`` (``mlplane.training``), takes a checkpoint at the next boundary and
tags it with the notice id. The operator writes it once per notice (the write is idempotent:
same key, same content) and records the delivery; a failed write is retried every round until
it lands, and the ``ReclaimNotice`` condition says why it did not.

``status.lastNotice``: one notice per attempt at a time. Notices seen while one is pending
(another pod of the same node, a second node) are answered by the same checkpoint and only
noted (``keys``), so a taint that stays on a node never asks for a second checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mlplane.monitoring.notice import NOTICE_FILE, notice_document
from mlplane.operator.conditions import StatusDraft, timestamp

__all__ = ["NOTICE_FILE", "NoticeDelivery", "ObservedNotice", "follow_notice"]

#: How many notice keys (nodes, pods) one pending notice remembers.
MAX_KEYS = 20


@dataclass(frozen=True)
class ObservedNotice:
    """A notice seen on a pod or node of an attempt (see ``builders/evidence.py``)."""

    attempt: int
    signal: str
    node: str | None = None
    pod: str | None = None
    time: str | None = None
    window_seconds: float | None = None
    deadline: str | None = None

    def key(self) -> str:
        """One node is one notice, whichever of its taint and its pods' conditions says it."""
        return f"node/{self.node}" if self.node else f"pod/{self.pod}"


@dataclass(frozen=True)
class NoticeDelivery:
    """Write ``document`` as :data:`NOTICE_FILE` under ``uri`` (the attempt's checkpoints)."""

    id: str
    uri: str
    document: dict[str, Any]


@dataclass(frozen=True)
class NoticeCheckpoint:
    """The checkpoint the runtime took for a notice (its run tags)."""

    id: str
    uri: str | None = None
    step: int | None = None


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _deadline(notice: ObservedNotice, now: datetime) -> str | None:
    if notice.deadline:
        return notice.deadline
    if notice.window_seconds is None:
        return None
    seen = _parse(notice.time) or now
    return timestamp(seen + timedelta(seconds=notice.window_seconds))


def follow_notice(
    s: StatusDraft,
    notices: Sequence[ObservedNotice],
    *,
    running: bool,
    checkpoint_uri: str | None,
    taken: NoticeCheckpoint | None,
    delivered: str | None,
    delivery_error: str | None,
) -> NoticeDelivery | None:
    """Update ``status.lastNotice`` and the ``ReclaimNotice`` condition; the delivery to make.

    ``running``: the current attempt runs (only a running attempt can checkpoint; a notice
    for one still starting waits). ``taken``: the notice checkpoint the run reports.
    ``delivered``/``delivery_error``: the edge's write of the notice this pass.
    """
    st = s.new
    current = st.get("currentAttempt")
    if not current:
        return None
    number = current["number"]
    last: dict[str, Any] | None = st.get("lastNotice")
    mine = last is not None and last.get("attempt") == number
    known = set(last.get("keys", ())) if mine and last is not None else set()
    fresh = sorted((n for n in notices if n.attempt == number and n.key() not in known),
                   key=lambda n: (n.time or "", n.key()))  # fmt: skip
    if fresh and mine and last is not None and "checkpoint" not in last:
        # Pending already: the one checkpoint answers these too.
        last["keys"] = (list(last.get("keys", ())) + [n.key() for n in fresh])[-MAX_KEYS:]
    elif fresh:
        first = fresh[0]
        sequence = (last or {}).get("sequence", 0) + 1 if mine else 1
        last = {
            "id": f"attempt-{number}-notice-{sequence}",
            "attempt": number,
            "sequence": sequence,
            "signal": first.signal,
            "time": first.time or timestamp(s.now),
            "seenTime": timestamp(s.now),
            "keys": ([*known] + [n.key() for n in fresh])[-MAX_KEYS:],
        }
        for field, value in (("node", first.node), ("pod", first.pod),
                             ("deadline", _deadline(first, s.now))):  # fmt: skip
            if value:
                last[field] = value
        st["lastNotice"] = last
        st["reclaimNotices"] = st.get("reclaimNotices", 0) + 1
        where = " on ".join(x for x in (first.pod and f"pod {first.pod}",
                                         first.node and f"node {first.node}") if x)  # fmt: skip
        by = f", to go by {last['deadline']}" if "deadline" in last else ""
        s.event("Warning", "ReclaimNotice",
                f"attempt {number}: {first.signal} on {where or 'its capacity'}{by}: asking it to "
                "checkpoint at its next step")  # fmt: skip
        mine = True
    if last is None:
        return None
    if not mine:
        if "checkpoint" not in last:
            s.condition("ReclaimNotice", "False", "CheckpointMissed",
                        f"attempt {last['attempt']} ended before it took the checkpoint asked "
                        f"for by notice {last['id']} ({last['signal']}): the next attempt "
                        "resumed from the newest checkpoint before it. If this repeats, the "
                        "notice window is shorter than a step plus a checkpoint write: shorten "
                        "steps or make checkpoints faster")  # fmt: skip
        return None
    if "checkpoint" in last:
        return None
    if taken is not None and taken.id == last["id"]:
        last["checkpoint"] = {k: v for k, v in (("uri", taken.uri), ("step", taken.step))
                              if v is not None}  # fmt: skip
        last["checkpointTime"] = timestamp(s.now)
        st["noticeCheckpoints"] = st.get("noticeCheckpoints", 0) + 1
        at = f"{taken.uri} (step {taken.step})" if taken.uri else "a checkpoint"
        message = f"attempt {number} took {at} on notice {last['id']} ({last['signal']})"
        s.condition("ReclaimNotice", "True", "CheckpointTaken", message)
        s.event("Normal", "NoticeCheckpointTaken", message)
        return None
    if st.get("phase") in ("Registering", "Succeeded", "Failed"):
        s.condition("ReclaimNotice", "False", "AttemptEnded",
                    f"attempt {number} ended ({st['phase']}) before it checkpointed on notice "
                    f"{last['id']} ({last['signal']}): no checkpoint is needed")  # fmt: skip
        return None
    if not checkpoint_uri:
        s.condition("ReclaimNotice", "False", "NoCheckpointUri",
                    f"notice {last['id']} ({last['signal']}) cannot reach attempt {number}: the "
                    "job has no checkpoint folder (set spec.checkpoint.uri, or the operator's "
                    "checkpoint base)")  # fmt: skip
        return None
    if delivered == last["id"]:
        last["deliveredTime"] = timestamp(s.now)
    if "deliveredTime" in last:
        by = f" before {last['deadline']}" if "deadline" in last else ""
        s.condition("ReclaimNotice", "Unknown", "CheckpointRequested",
                    f"attempt {number} was told of {last['signal']} at {last['deliveredTime']} "
                    f"(notice {last['id']}); waiting for its checkpoint{by}")  # fmt: skip
        return None
    if delivery_error:
        s.condition(
            "ReclaimNotice",
            "False",
            "NoticeNotDelivered",
            f"notice {last['id']} ({last['signal']}) could not be written to "
            f"{checkpoint_uri}: {delivery_error}. Retried every round; give the operator "
            "write access to <checkpoint uri>/*/" + NOTICE_FILE + " (docs/spot.md)",
        )
        if s.old_condition("ReclaimNotice").get("reason") != "NoticeNotDelivered":
            s.event("Warning", "NoticeNotDelivered", f"notice {last['id']}: {delivery_error}")
    if not running:
        s.condition("ReclaimNotice", "Unknown", "WaitingForRunningAttempt",
                    f"notice {last['id']} ({last['signal']}) is delivered once attempt {number} "
                    "runs")  # fmt: skip
        return None
    document = notice_document(
        id=last["id"], attempt=number, signal=last["signal"], time=last["time"],
        deadline=last.get("deadline"), node=last.get("node"), pod=last.get("pod"),
    )  # fmt: skip
    return NoticeDelivery(last["id"], checkpoint_uri, document)
