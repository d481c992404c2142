"""Leader election on a ``coordination.k8s.io/v1`` Lease: the decision, pure.

Several operator replicas run; exactly one (the holder of the Lease) runs Kopf and writes.
This module decides, from what a candidate observed, what it does next; the loop that reads
and writes the Lease through the API is ``operator/leader_loop.py``. The algorithm is
client-go's ``leaderelection``:

- A candidate never trusts the timestamps in the Lease (another machine's clock). It remembers
  the record it last saw and *when it first saw it, on its own monotonic clock*; the holder's
  lease has expired when that record has not changed for ``leaseDurationSeconds``.
- Every write carries the ``metadata.resourceVersion`` that was read: the API server refuses a
  write based on a stale read (409), so two candidates can never both take the same Lease.
- The leader renews every ``retry_period`` and stops (the process exits) when it has not
  renewed for ``renew_deadline``, counted from the *start* of its last successful renew. A
  standby takes over only ``lease_duration`` after it saw that renewal land, which is later:
  the leader has stopped ``lease_duration - renew_deadline`` before anyone else may write, so
  long as the two clocks run at about the same rate (not the same time: rate).
- A leader that stops gracefully releases the Lease (holder cleared): a standby takes it at
  its next look, without waiting for the lease to expire.
"""

from __future__ import annotations

import copy
import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mlplane.operator.config import LeaderElectionConfig

API_VERSION = "coordination.k8s.io/v1"


def identity(pod_name: str) -> str:
    """A holder identity unique to this process: the pod's name and a random suffix (a
    restarted container in the same pod is a new candidate, never the old holder)."""
    return f"{pod_name}_{secrets.token_hex(4)}"


def micro_time(moment: datetime) -> str:
    """A Lease timestamp (``MicroTime``: RFC 3339 with microseconds, UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    """The part of a Lease's spec that says who holds it (what a candidate watches change)."""

    holder: str
    lease_duration: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration=int(duration) if isinstance(duration, int | float) else None,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


@dataclass(frozen=True)
class Observation:
    """What a candidate remembers between looks: the record it last saw, and when (on its own
    monotonic clock) it first saw that record."""

    record: LeaseRecord
    observed_at: float


class Action(enum.Enum):
    #: No Lease exists: create it, holding it.
    CREATE = "create"
    #: The Lease is free (released) or expired: take it (PUT with the resourceVersion read).
    ACQUIRE = "acquire"
    #: We hold it: renew it (PUT with the resourceVersion read).
    RENEW = "renew"
    #: Someone else holds a valid lease: write nothing, look again after ``wait``.
    STANDBY = "standby"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: The Lease to write (None for STANDBY).
    body: dict[str, Any] | None
    #: What to remember for the next look.
    observation: Observation | None
    #: Seconds until the next look (after a write: the next renew or look).
    wait: float
    #: Why, for the log.
    reason: str


def _lease_body(
    name: str,
    namespace: str,
    base: Mapping[str, Any] | None,
    spec: dict[str, Any],
) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(dict(base)) if base else {}
    body["apiVersion"] = API_VERSION
    body["kind"] = "Lease"
    meta = body.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    body["spec"] = {**(body.get("spec") or {}), **spec}
    return body


def decide(
    lease: Mapping[str, Any] | None,
    previous: Observation | None,
    *,
    now: float,
    wall: datetime,
    me: str,
    settings: LeaderElectionConfig,
    namespace: str,
) -> Decision:
    """What candidate ``me`` does after reading ``lease`` (None: there is none) at ``now``
    (its monotonic clock; ``wall`` only goes into timestamps humans read)."""
    stamp = micro_time(wall)
    duration = settings.lease_duration
    if lease is None:
        spec = {"holderIdentity": me, "leaseDurationSeconds": duration, "acquireTime": stamp,
                "renewTime": stamp, "leaseTransitions": 0}  # fmt: skip
        body = _lease_body(settings.lease_name, namespace, None, spec)
        return Decision(Action.CREATE, body, Observation(LeaseRecord.of(body), now),
                        settings.retry_period, "no lease exists: creating it")  # fmt: skip
    record = LeaseRecord.of(lease)
    if previous is None or previous.record != record:
        observation = Observation(record, now)  # a change: the holder's time starts now
    else:
        observation = previous
    if record.holder == me:
        spec = {"renewTime": stamp, "leaseDurationSeconds": duration}
        body = _lease_body(settings.lease_name, namespace, lease, spec)
        return Decision(Action.RENEW, body, observation, settings.retry_period, "renewing")
    if record.holder:
        held_for = record.lease_duration or duration
        left = observation.observed_at + held_for - now
        if left > 0:
            why = f"held by {record.holder}; expires in {left:.1f}s unless renewed"
            return Decision(
                Action.STANDBY, None, observation, min(settings.retry_period, left), why
            )
        unchanged = now - observation.observed_at
        why = f"{record.holder}'s lease expired (unchanged for {unchanged:.1f}s)"
    else:
        why = "the lease was released"
    spec = {"holderIdentity": me, "leaseDurationSeconds": duration, "acquireTime": stamp,
            "renewTime": stamp, "leaseTransitions": record.transitions + 1}  # fmt: skip
    body = _lease_body(settings.lease_name, namespace, lease, spec)
    return Decision(Action.ACQUIRE, body, observation, settings.retry_period, why)


def release(lease: Mapping[str, Any], *, me: str, wall: datetime) -> dict[str, Any] | None:
    """The Lease with its holder cleared, written by a leader that has stopped writing, so a
    standby takes over at once (None when ``me`` does not hold it: nothing to release).
    Keeps the resourceVersion read: a release never overwrites someone else's lease."""
    if LeaseRecord.of(lease).holder != me:
        return None
    body = copy.deepcopy(dict(lease))
    spec = body.setdefault("spec", {})
    spec.pop("holderIdentity", None)
    stamp = micro_time(wall)
    spec.update({"leaseDurationSeconds": 1, "acquireTime": stamp, "renewTime": stamp})
    return body


def still_leading(renewed_at: float, now: float, settings: LeaderElectionConfig) -> bool:
    """Whether a leader whose last successful renew *started* at ``renewed_at`` may still
    write at ``now`` (both on its monotonic clock)."""
    return now - renewed_at < settings.renew_deadline


def time_left(renewed_at: float, now: float, settings: LeaderElectionConfig) -> float:
    """Seconds a leader has left to renew before it must stop."""
    return max(0.0, renewed_at + settings.renew_deadline - now)
