"""Signed request ids: the variant that served a request travels inside its id.

``POST /v1/feedback {requestId, outcome}`` must credit the outcome to the variant (and A/B
test, model version) that served the request, even when the router replica that served it has
since restarted, the weights have changed, or another replica receives the feedback. Rather than
a shared store mapping ids to variants, the id *carries* that information, signed with an HMAC:

    <payload>.<tag>     payload = base64url(JSON [1, variant, version, deployment, abtest,
                                                  issued_at_ms, nonce])
                        tag     = base64url(HMAC-SHA256(key, payload)[:16])

so any router replica holding the key can verify an id and read its attribution with no I/O,
and nobody without the key can mint ids (forged or edited ids fail verification: 128-bit tag,
compared in constant time). The nonce (96 random bits) makes every id unique; it is what the
feedback ledger deduplicates on.

The keys: a directory holding the file ``current`` and, around a rotation, ``next`` and
``previous`` (:class:`KeyFiles`). On Kubernetes it is the ModelDeployment's Secret
``<name>-request-signing``, which the operator creates (random, once) and mounts into every
serving pod; on the local platform a folder under the state dir (mode 0600) laid out the same
way. Ids are signed with ``current``; ``current``, ``next`` and ``previous`` all verify. A
rotation (see ``mlplane.operator.builders.signing``) first stages ``next`` (accepted
everywhere, signing nowhere) and, once every pod has it, promotes it (``previous`` <-
``current``, ``current`` <- ``next``): no replica ever meets an id signed with a key it does
not know, and ids issued before the rotation stay valid until the next one. Kubernetes updates
a mounted Secret in place: :class:`KeyFiles` notices a new file by its inode/mtime (one
``stat`` per file at most every second, and at once when an id fails to verify) and rereads it,
so no replica restarts. The key is not in Ray's (unauthenticated) internal key-value store,
and replacing the Ray cluster (KubeRay's NewCluster upgrade) keeps it. ``MLPLANE_FEEDBACK_KEY``
(one fixed key, no rotation) remains for running the app by hand without a key directory.

The payload is readable by the client (base64, not encrypted): it reveals the variant name and
model version, which the response shows anyway (``x-mlplane-variant``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CURRENT",
    "KEY_ENV",
    "NEXT",
    "PREVIOUS",
    "InvalidRequestId",
    "KeyFiles",
    "RequestIdSigner",
    "RequestInfo",
    "SigningKeys",
    "generate_key",
    "key_from_env",
]

log = logging.getLogger("mlplane.serving.request_id")

KEY_ENV = "MLPLANE_FEEDBACK_KEY"
#: File names in the key directory (the keys of the operator's Secret).
CURRENT = "current"
PREVIOUS = "previous"
#: A key a rotation has staged: accepted, not signed with until the operator promotes it.
NEXT = "next"
#: Shortest key accepted (bytes): HMAC-SHA256 with less would be guessable.
MIN_KEY_BYTES = 16
_FORMAT = 1
_TAG_BYTES = 16
_NONCE_BYTES = 12
#: Longest id accepted for verification (a few hundred bytes in practice): bounds the work an
#: attacker can cause per feedback call.
MAX_ID_LENGTH = 1024


class InvalidRequestId(ValueError):
    """The id was not issued by this deployment with this key (malformed, forged or foreign)."""


@dataclass(frozen=True)
class RequestInfo:
    """What a request id says about the request it names."""

    variant: str
    version: int
    deployment: str
    abtest: str | None
    issued_at: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_key() -> bytes:
    """A fresh random 256-bit key."""
    return secrets.token_bytes(32)


def key_from_env(environ: dict[str, str] | None = None) -> bytes | None:
    """The key from ``MLPLANE_FEEDBACK_KEY`` (UTF-8 bytes), or None when unset or empty."""
    value = (os.environ if environ is None else environ).get(KEY_ENV, "")
    return value.encode() if value else None


@dataclass(frozen=True)
class SigningKeys:
    """The key ids are signed with, and the ones also accepted around a rotation: the one
    before (``previous``) and the one staged to come (``next``)."""

    current: bytes
    previous: bytes | None = None
    next: bytes | None = None

    def __post_init__(self) -> None:
        for name, key in ((CURRENT, self.current), (PREVIOUS, self.previous), (NEXT, self.next)):
            if key is not None and len(key) < MIN_KEY_BYTES:
                raise ValueError(f"signing key {name!r} must be at least {MIN_KEY_BYTES} bytes")

    def verifying(self) -> tuple[bytes, ...]:
        return tuple(k for k in (self.current, self.next, self.previous) if k is not None)


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """Identity of a file's content as cheaply as a ``stat`` (follows the Secret's symlinks)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class KeyFiles:
    """The signing keys in a directory (``current``; ``previous``, ``next`` around a rotation),
    reread on change.

    Raises ``ValueError`` at construction when the directory has no usable ``current`` (the
    replica must not start signing with nothing). A later unreadable state (a half-made
    rotation, a deleted file) keeps the last good keys and logs a warning.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        recheck_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self._recheck_s = recheck_s
        self._clock = clock
        self._stamps = self._read_stamps()
        self._keys = self._load()
        self._checked = clock()

    def _read_stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_file_stamp(self.directory / name) for name in (CURRENT, PREVIOUS, NEXT))

    def _optional(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes().strip() or None
        except FileNotFoundError:
            return None

    def _load(self) -> SigningKeys:
        try:
            current = (self.directory / CURRENT).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"no signing key {self.directory / CURRENT}: {exc}") from None
        return SigningKeys(current, self._optional(PREVIOUS), self._optional(NEXT))

    def keys(self, *, force: bool = False) -> SigningKeys:
        """The keys, rereading the files when their stamps changed (checked every
        ``recheck_s`` seconds, or now with ``force``)."""
        now = self._clock()
        if not force and now - self._checked < self._recheck_s:
            return self._keys
        self._checked = now
        stamps = self._read_stamps()
        if stamps != self._stamps:
            try:
                keys = self._load()
            except (OSError, ValueError) as exc:
                log.warning("signing keys in %s unreadable, keeping the last ones: %s",
                            self.directory, exc)  # fmt: skip
                return self._keys
            self._stamps = stamps
            if keys != self._keys:
                log.info("signing keys in %s changed: reloaded", self.directory)
            self._keys = keys
        return self._keys


KeySource = bytes | SigningKeys | KeyFiles


class RequestIdSigner:
    """Issues and verifies request ids of one deployment (``"<namespace>/<name>"``).

    ``keys``: one fixed key, a :class:`SigningKeys` pair, or :class:`KeyFiles` (followed as
    the files change: rotation without a restart).
    """

    def __init__(self, keys: KeySource, deployment: str) -> None:
        if isinstance(keys, bytes):
            if len(keys) < MIN_KEY_BYTES:
                raise ValueError(f"{KEY_ENV} must be at least {MIN_KEY_BYTES} bytes long")
            keys = SigningKeys(keys)
        self._source = keys
        self.deployment = deployment

    def keys(self, *, force: bool = False) -> SigningKeys:
        """The keys in use now."""
        if isinstance(self._source, KeyFiles):
            return self._source.keys(force=force)
        return self._source

    @staticmethod
    def _tag(key: bytes, payload: str) -> str:
        mac = hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()
        return _b64(mac[:_TAG_BYTES])

    def _signed(self, payload: str, tag: str) -> bool:
        """Whether ``tag`` is ``payload``'s under a key accepted now (each compared in
        constant time). On a miss the key files are looked at once more: this replica may
        not have seen a rotation another replica has already signed with."""
        keys = self.keys()
        if any(hmac.compare_digest(self._tag(k, payload), tag) for k in keys.verifying()):
            return True
        fresh = self.keys(force=True)
        return fresh != keys and any(
            hmac.compare_digest(self._tag(k, payload), tag) for k in fresh.verifying()
        )

    def issue(self, variant: str, version: int, abtest: str | None, now: float) -> str:
        """A new id for a request served now by ``variant`` (model ``version``)."""
        body = [
            _FORMAT,
            variant,
            int(version),
            self.deployment,
            abtest,
            round(now * 1000),
            secrets.token_hex(_NONCE_BYTES),
        ]
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._tag(self.keys().current, payload)}"

    def verify(self, request_id: str) -> RequestInfo:
        """The request's attribution; raises :class:`InvalidRequestId` for anything else."""
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_LENGTH:
            raise InvalidRequestId("not a request id issued by this deployment")
        payload, sep, tag = request_id.partition(".")
        if not sep or not payload.isascii() or not tag.isascii():
            raise InvalidRequestId("not a request id issued by this deployment")
        if not self._signed(payload, tag):
            raise InvalidRequestId("unknown request id (bad signature)")
        try:
            body = json.loads(_unb64(payload))
            fmt, variant, version, deployment, abtest, issued_ms, nonce = body
        except (ValueError, TypeError, binascii.Error) as exc:  # signed but unreadable: a bug
            raise InvalidRequestId(f"unreadable request id: {exc}") from None
        if fmt != _FORMAT:
            raise InvalidRequestId(f"request id format {fmt} is not supported")
        if deployment != self.deployment:
            raise InvalidRequestId(f"request id belongs to deployment {deployment!r}")
        return RequestInfo(
            variant=str(variant),
            version=int(version),
            deployment=str(deployment),
            abtest=None if abtest is None else str(abtest),
            issued_at=issued_ms / 1000,
            nonce=str(nonce),
        )
