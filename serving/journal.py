"""The monitor's saved counts: a snapshot plus an append-only journal in a state directory.

Why: the A/B evidence (requests and outcomes per variant) and the feedback ledger (ids already
counted) live in the app's single ``monitor`` replica. Without saved state, a restart of that
replica starts them from zero and the operator can only carry over what it had read before (up
to an analysis interval of counts lost). With a state directory, every change the monitor
acknowledges is written first:

- a router's batch (``push``): the batch and its ``(router id, sequence number)`` are appended
  before the push returns, so a batch is either saved or re-sent by its router (which keeps an
  unacknowledged batch and re-sends it unchanged), and applied once either way;
- an accepted outcome (``feedback``): appended before the 200, with its request's nonce, so the
  replayed ledger still refuses a second outcome for the same id.

At start the monitor replays the snapshot and the journal (a torn last line, from a kill in the
middle of a write, was never acknowledged and is dropped), writes a fresh snapshot and starts a
new journal. The snapshot is rewritten (temporary file, then rename: atomic) whenever the
journal grows past :data:`COMPACT_EVERY` records.

Guarantee: each record is written with one ``write`` to the file before the call returns, so a
replica killed with SIGKILL loses nothing it acknowledged (the data is in the kernel's page
cache). ``fsync`` is not called on every record: a machine crash or power loss can lose the
last records, the same as losing the node (and the directory with it). The count *epoch* is
saved with the state: a monitor that restores it keeps its epoch; one that starts without
(a new cluster, a lost directory) makes a new epoch, and the operator folds the old epoch's
last-read totals into the ABTest status (see ``operator/reconcile/abtest.py``).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["COMPACT_EVERY", "Journal", "new_epoch"]

log = logging.getLogger("mlplane.serving.journal")

SNAPSHOT = "snapshot.json"
JOURNAL = "journal.jsonl"
#: Records appended before the snapshot is rewritten (a replay reads at most this many).
COMPACT_EVERY = 20_000


def new_epoch() -> str:
    """A fresh count epoch id (random: two monitor incarnations never share one)."""
    return uuid.uuid4().hex[:16]


class Journal:
    """A snapshot and the records appended since, in ``directory`` (created if missing)."""

    def __init__(self, directory: str | Path, *, compact_every: int = COMPACT_EVERY) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.compact_every = compact_every
        self._file: Any = None
        self._records = 0

    @property
    def snapshot_path(self) -> Path:
        return self.directory / SNAPSHOT

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL

    def load(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The saved snapshot (None: none) and the journal's complete records, in order."""
        snapshot = None
        if self.snapshot_path.exists():
            snapshot = json.loads(self.snapshot_path.read_text())
        return snapshot, list(self._records_on_disk())

    def _records_on_disk(self) -> Iterator[dict[str, Any]]:
        if not self.journal_path.exists():
            return
        with self.journal_path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    log.warning("journal: dropping a torn last record (line %d)", number)
                    return
                try:
                    yield json.loads(line)
                except ValueError:
                    log.warning("journal: dropping an unreadable record (line %d)", number)

    def set_aside(self) -> str:
        """Move unreadable state out of the way (kept for a post-mortem); the name it got."""
        self.close()
        suffix = f".unreadable-{uuid.uuid4().hex[:8]}"
        for path in (self.snapshot_path, self.journal_path):
            if path.exists():
                os.replace(path, path.with_name(path.name + suffix))
        return suffix

    def save_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Replace the snapshot atomically and start an empty journal (the snapshot holds it)."""
        tmp = self.snapshot_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(snapshot, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        if self._file is not None:
            self._file.close()
        # Truncating after the rename: a kill in between replays records the snapshot already
        # holds -- which is why the snapshot records each router's last sequence number and
        # every counted nonce, and the replay skips what it has seen.
        self._file = self.journal_path.open("wb")
        self._records = 0

    def append(self, record: dict[str, Any]) -> bool:
        """Write one record (one ``write``); True when the caller should compact now."""
        if self._file is None:
            self._file = self.journal_path.open("ab")
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        self._file.write(line)
        self._file.flush()
        self._records += 1
        return self._records >= self.compact_every

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
