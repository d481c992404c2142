"""The reclaim notice object: what the operator writes and the training runtime reads.

Shared here (the ground floor) because the training image has no operator code. The object
is :data:`NOTICE_FILE` at the root of a TrainingJob's checkpoint folder (beside the
``step-*`` folders, which the checkpoint store alone lists, so it is never taken for a
checkpoint). One object per job, rewritten for each new notice; the runtime acts on a notice
of its own attempt whose id it has not answered yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

NOTICE_FILE = "_mlplane_notice.json"
NOTICE_FORMAT = "mlplane.notice/v1"
#: Run tags of the checkpoint taken on a notice (written with the checkpoint tags, one request).
TAG_NOTICE_ID = "mlplane.notice.id"
TAG_NOTICE_CHECKPOINT_URI = "mlplane.notice.checkpoint_uri"
TAG_NOTICE_CHECKPOINT_STEP = "mlplane.notice.checkpoint_step"
#: Where the runtime marks a notice checkpoint as pending (created on notice, removed once it
#: is written): the spot worker pods' preStop hook waits while it exists.
NOTICE_PENDING_FILE = "/tmp/mlplane-notice-pending"
#: The checkpoint marker's metadata key naming the notice it answered.
METADATA_NOTICE = "mlplane.notice"


@dataclass(frozen=True)
class NoticeDoc:
    """A notice as the runtime reads it."""

    id: str
    attempt: int
    signal: str
    time: str | None = None
    deadline: str | None = None
    node: str | None = None
    pod: str | None = None


def notice_document(
    *,
    id: str,
    attempt: int,
    signal: str,
    time: str | None,
    deadline: str | None = None,
    node: str | None = None,
    pod: str | None = None,
) -> dict[str, Any]:
    """The JSON object to write (keys with no value left out)."""
    doc: dict[str, Any] = {"format": NOTICE_FORMAT, "id": id, "attempt": attempt,
                           "signal": signal}  # fmt: skip
    for key, value in (("time", time), ("deadline", deadline), ("node", node), ("pod", pod)):
        if value:
            doc[key] = value
    return doc


def encode(document: dict[str, Any]) -> bytes:
    """Bytes of a notice object (stable: the same notice writes the same bytes)."""
    return json.dumps(document, sort_keys=True).encode()


def parse_notice(data: bytes) -> NoticeDoc | None:
    """A notice object read back; None when it is not one (garbage is ignored, not fatal)."""
    try:
        doc = json.loads(data)
        if doc.get("format") != NOTICE_FORMAT:
            return None
        return NoticeDoc(
            id=str(doc["id"]), attempt=int(doc["attempt"]), signal=str(doc["signal"]),
            time=doc.get("time"), deadline=doc.get("deadline"), node=doc.get("node"),
            pod=doc.get("pod"),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
