"""Status conditions as the Kubernetes API conventions define them, changed only when they change.

Pure functions over the ``status.conditions`` list of a resource body (camelCase dicts, as
stored). ``lastTransitionTime`` moves only when ``status`` flips, so watching tools see real
transitions; an unchanged condition yields an equal list, so the operator writes nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes times."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type, if present."""
    return next((c for c in conditions or () if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    """Whether the condition is present with status True."""
    found = find(conditions, type_)
    return found is not None and found.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: datetime,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with the condition set; other conditions and their order are kept.

    ``lastTransitionTime`` is ``now`` only if the status differs from before (or it is new).
    """
    conditions = [dict(c) for c in conditions or ()]
    new: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": timestamp(now),
    }
    if generation is not None:
        new["observedGeneration"] = generation
    for index, old in enumerate(conditions):
        if old.get("type") == type_:
            if old.get("status") == status and old.get("lastTransitionTime"):
                new["lastTransitionTime"] = old["lastTransitionTime"]
            conditions[index] = new
            return conditions
    conditions.append(new)
    return conditions


def remove(conditions: list[dict[str, Any]] | None, type_: str) -> list[dict[str, Any]]:
    """A new list without the condition of that type."""
    return [dict(c) for c in conditions or () if c.get("type") != type_]


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The top-level status fields that differ (a merge patch); empty when nothing changed.

    Fields present before and absent now are set to None so a merge patch removes them, at
    every level: a merge patch merges objects, so a nested field left out (attempt 2's
    ``currentAttempt.runningTime`` once attempt 3 is current) would otherwise stay stored.
    """
    old = old or {}
    patch = {k: _with_removals(old.get(k), v) for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def _with_removals(old: Any, new: Any) -> Any:
    """``new``, with None for each key of an old object that ``new`` no longer has."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = {k: _with_removals(old.get(k), v) for k, v in new.items()}
    out.update({k: None for k in old if k not in new})
    return out


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event the reconcile asks for (the caller posts it)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


class StatusDraft:
    """The next status of a resource being built from its last one, with condition and event
    helpers bound to ``now`` and the resource's generation (each pure reconcile starts here)."""

    def __init__(self, old: dict[str, Any] | None, now: datetime, generation: int | None) -> None:
        self.old: dict[str, Any] = old or {}
        self.new: dict[str, Any] = copy.deepcopy(self.old)
        self.now = now
        self.generation = generation
        self.events: list[Event] = []

    def condition(self, type_: str, status: str, reason: str, message: str) -> None:
        self.new["conditions"] = set_condition(
            self.new.get("conditions"), type_, status,  # type: ignore[arg-type]
            reason, message, now=self.now, generation=self.generation,
        )  # fmt: skip

    def old_condition(self, type_: str) -> dict[str, Any]:
        return find(self.old.get("conditions"), type_) or {}

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))
