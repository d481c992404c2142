"""The local platform's stand-in for the request-signing Secret: a key folder per
ModelDeployment under ``<state dir>/signing/<namespace>/<name>/``.

Laid out as the kubelet lays out a mounted Secret, so the serving app reads both with the same
code (:class:`mlplane.serving.request_id.KeyFiles`): the files ``current`` and ``previous`` are
symlinks through ``..data`` to a version folder, and a write makes a new version folder and
swaps ``..data`` atomically (a reader sees the old keys or the new ones, never a mix). Folders
0700, files 0600: only the user running the platform (and so Ray) reads them.

The decision is the Kubernetes one (:func:`mlplane.operator.builders.signing.next_keys`): made
once, rotated once per value of the ModelDeployment's ``mlplane.dev/rotate-signing-key``
annotation, in the same two steps (stage ``next``, promote it after :data:`SETTLE_SECONDS`:
here only the app's reread interval, 1 s, must pass, not a kubelet's sync). The owner uid is
kept beside the keys: a folder left by a deleted ModelDeployment of the same name (what the
garbage collector removes on Kubernetes) is replaced, never reused.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from mlplane.operator.builders import signing
from mlplane.operator.builders.signing import SigningKeys
from mlplane.operator.conditions import Event
from mlplane.operator.reconcile.signing import written_event

log = logging.getLogger("mlplane.local.signing")

_DATA = "..data"
_META = "owner.json"
_FILES = (signing.CURRENT, signing.PREVIOUS, signing.NEXT)
#: Seconds a staged key is only accepted before it signs: a few of the app's 1 s rereads.
SETTLE_SECONDS = 5.0


class LocalSigningKeys:
    """Key folders of the local platform's ModelDeployments."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "signing"

    def directory(self, namespace: str, name: str) -> Path:
        """What the app gets as ``args.signing_keys`` for this ModelDeployment."""
        return self.root / namespace / name

    def read(self, namespace: str, name: str) -> tuple[str | None, SigningKeys | None]:
        """The owner uid and the keys in the folder (None, None when there is none)."""
        folder = self.directory(namespace, name)
        try:
            meta = json.loads((folder / _DATA / _META).read_text())
            current = (folder / signing.CURRENT).read_text().strip()
        except (OSError, ValueError):
            return None, None
        optional: dict[str, str | None] = {}
        for filename in (signing.PREVIOUS, signing.NEXT):
            try:
                optional[filename] = (folder / filename).read_text().strip() or None
            except FileNotFoundError:
                optional[filename] = None
        keys = (
            SigningKeys(current, optional[signing.PREVIOUS], optional[signing.NEXT],
                        meta.get("rotatedFor"), meta.get("stagedAt"))
            if current
            else None
        )  # fmt: skip
        return meta.get("uid"), keys

    def write(self, namespace: str, name: str, uid: str, keys: SigningKeys) -> None:
        """Write a new version of the folder and switch to it atomically."""
        folder = self.directory(namespace, name)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        version = folder / f"..{secrets.token_hex(6)}"
        version.mkdir(mode=0o700)
        meta = {"uid": uid, "rotatedFor": keys.rotated_for, "stagedAt": keys.staged_at}
        files = {signing.CURRENT: keys.current, signing.PREVIOUS: keys.previous,
                 signing.NEXT: keys.next, _META: json.dumps(meta)}  # fmt: skip
        for filename, text in files.items():
            if text is None:
                continue
            fd = os.open(version / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        old = os.readlink(folder / _DATA) if (folder / _DATA).is_symlink() else None
        tmp = folder / f"{_DATA}_tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version.name)
        os.replace(tmp, folder / _DATA)
        for filename in _FILES:
            link = folder / filename
            if not link.is_symlink():
                link.symlink_to(f"{_DATA}/{filename}")
        if old is not None and old != version.name:
            shutil.rmtree(folder / old, ignore_errors=True)

    def ensure(
        self,
        namespace: str,
        name: str,
        uid: str,
        annotations: Mapping[str, str] | None,
        now: datetime,
    ) -> list[Event]:
        """Make the keys once, stage and promote a rotation; the events to record."""
        owner, keys = self.read(namespace, name)
        if owner is not None and owner != uid:
            log.info("signing keys of %s/%s belong to a deleted incarnation (uid %s): replaced",
                     namespace, name, owner)  # fmt: skip
            keys = None
        request = signing.rotate_request(annotations)
        wanted = signing.next_keys(keys, request, secrets.token_hex(32), now, SETTLE_SECONDS)
        if wanted is None:
            return []
        self.write(namespace, name, uid, wanted)
        if keys is None:
            log.info("signing keys of %s/%s made", namespace, name)
            return []
        return [written_event(f"the key folder of {namespace}/{name}", keys, wanted,
                              SETTLE_SECONDS)]  # fmt: skip

    def delete_except(self, keep: Iterable[tuple[str, str]]) -> list[str]:
        """Remove the key folders of ModelDeployments that are gone."""
        wanted = set(keep)
        gone = []
        for folder in sorted(self.root.glob("*/*")) if self.root.is_dir() else ():
            key = (folder.parent.name, folder.name)
            if key not in wanted:
                shutil.rmtree(folder, ignore_errors=True)
                gone.append("/".join(key))
        return gone
