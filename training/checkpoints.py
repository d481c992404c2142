"""Checkpoints on S3 or a local folder: newest N kept, never resumed from a half-written one.

Layout under the checkpoint URI (``s3://bucket/prefix`` or a path)::

    step-000000000040/model.pkl
    step-000000000040/_mlplane_checkpoint.json     <- written last: the checkpoint is complete
    step-000000000050/model.pkl                    <- no marker: cut mid-write, ignored

Why this shape:

* **Marker last.** A spot node can vanish at any instant, including between two uploads. A
  checkpoint only counts once its marker exists, and the marker lists every file with its size,
  so a folder missing a file (or holding a truncated one) is not complete either. The newest
  *complete* checkpoint is the one resumed from. On a local disk every file (the marker
  included) is written to a temporary name, flushed and renamed, so a crash never leaves a
  truncated file under its real name; an S3 ``PutObject`` is atomic already.
* **Deleting goes the other way round**: the marker first, then the files, so pruning cut short
  leaves an incomplete folder (ignored, and swept by the next prune), never a "complete"
  checkpoint with missing files.
* **One writer.** A training job has one checkpoint writer at a time (Ray Train's rank 0, or the
  single training task); the store does no locking. Re-saving a step first removes that
  step's marker, so an older checkpoint of the same step is never mistaken for the new one.
* Step folders are zero-padded so that a plain listing sorts them; the step is parsed anyway.

The same logic runs on both backends: they only supply put/get/list/delete of opaque keys.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mlplane.training.context import normalize_checkpoint_uri, rfc3339

MARKER = "_mlplane_checkpoint.json"
CHECKPOINT_FORMAT = "mlplane.checkpoint/v1"
STEP_PREFIX = "step-"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_STEP_WIDTH = 12


def step_dir(step: int) -> str:
    """``step-000000000040``: the folder of one checkpoint, sortable as text."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0 (got {step})")
    return f"{STEP_PREFIX}{step:0{_STEP_WIDTH}d}"


def _check_name(name: str) -> str:
    norm = posixpath.normpath(name)
    if (
        not name
        or name.startswith("/")
        or norm in (".", "..")
        or norm.startswith("../")
        or norm != name
        or name == MARKER
    ):
        raise ValueError(
            f"invalid checkpoint file name {name!r}: use a normalised relative path "
            f"(no '..', no leading '/', not {MARKER!r})"
        )
    return name


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint: its step, where it is, when it was written, what it holds."""

    step: int
    uri: str
    time: str
    files: Mapping[str, int]
    attempt: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: The TrainingJob (``metadata.uid``) that wrote it; None for a script run by hand.
    trainingjob_uid: str | None = None


class CheckpointStore(ABC):
    """Complete checkpoints under one URI (see the module docstring for the guarantees)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    # --- backend primitives (keys are relative, '/'-separated) ---------------------------------

    @abstractmethod
    def _put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes: ...

    @abstractmethod
    def _list(self) -> dict[str, int]:
        """Every key under the store with its size in bytes."""

    @abstractmethod
    def _delete(self, keys: Iterable[str]) -> None: ...

    # --- the store --------------------------------------------------------------------------------

    def uri_of(self, step: int) -> str:
        """Where the checkpoint of ``step`` lives (what the ``mlplane.checkpoint.uri`` tag says)."""
        return f"{self.uri}/{step_dir(step)}"

    def save(
        self,
        step: int,
        files: Mapping[str, bytes],
        *,
        attempt: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        trainingjob_uid: str | None = None,
    ) -> CheckpointInfo:
        """Write ``files`` as the checkpoint of ``step``; complete only once this returns.

        ``trainingjob_uid`` goes into the marker, so a restore can tell its own TrainingJob's
        checkpoints from another's (see :meth:`TrainingContext.owns`).
        """
        if not files:
            raise ValueError("a checkpoint needs at least one file")
        names = {_check_name(name): bytes(data) for name, data in files.items()}
        folder = step_dir(step)
        existing = [k for k in self._list() if k.startswith(folder + "/")]
        marker = f"{folder}/{MARKER}"
        if marker in existing:
            self._delete([marker])
        stale = [k for k in existing if k != marker and k[len(folder) + 1 :] not in names]
        if stale:
            self._delete(stale)
        for name, data in names.items():
            self._put(f"{folder}/{name}", data)
        info = CheckpointInfo(
            step=step,
            uri=self.uri_of(step),
            time=rfc3339(now),
            files={name: len(data) for name, data in names.items()},
            attempt=attempt,
            metadata=dict(metadata or {}),
            trainingjob_uid=trainingjob_uid,
        )
        doc = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "time": info.time,
            "attempt": attempt,
            "trainingjob_uid": trainingjob_uid,
            "files": dict(info.files),
            "metadata": info.metadata,
        }
        self._put(marker, json.dumps(doc, sort_keys=True).encode())
        return info

    def save_directory(
        self,
        step: int,
        directory: str | os.PathLike[str],
        *,
        attempt: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> CheckpointInfo:
        """Save every file under ``directory`` (relative paths kept) as checkpoint ``step``."""
        root = Path(directory)
        files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
        return self.save(step, files, attempt=attempt, metadata=metadata, now=now)

    def _scan(self) -> tuple[list[CheckpointInfo], dict[int, list[str]]]:
        """Complete checkpoints (ascending step) and the keys of every step folder."""
        listing = self._list()
        folders: dict[int, list[str]] = {}
        for key in listing:
            head, _, _rest = key.partition("/")
            if m := _STEP_DIR.match(head):
                folders.setdefault(int(m.group(1)), []).append(key)
        complete: list[CheckpointInfo] = []
        for step in sorted(folders):
            info = self._complete(step, listing)
            if info is not None:
                complete.append(info)
        return complete, folders

    def _complete(self, step: int, listing: Mapping[str, int]) -> CheckpointInfo | None:
        folder = step_dir(step)
        marker = f"{folder}/{MARKER}"
        if marker not in listing:
            return None
        try:
            doc = json.loads(self._get(marker))
            files = {str(k): int(v) for k, v in doc["files"].items()}
            ok = doc.get("format") == CHECKPOINT_FORMAT and int(doc["step"]) == step
        except (KeyError, ValueError, TypeError, AttributeError, FileNotFoundError):
            return None
        if not ok or any(listing.get(f"{folder}/{n}") != size for n, size in files.items()):
            return None
        attempt, uid = doc.get("attempt"), doc.get("trainingjob_uid")
        return CheckpointInfo(
            step=step,
            uri=self.uri_of(step),
            time=str(doc.get("time", "")),
            files=files,
            attempt=int(attempt) if attempt is not None else None,
            metadata=dict(doc.get("metadata") or {}),
            trainingjob_uid=str(uid) if uid else None,
        )

    # --- side objects (beside the checkpoints: the reclaim notice) ---------------------------

    @staticmethod
    def _side_key(name: str) -> str:
        if "/" in name or name.startswith(STEP_PREFIX) or name in ("", ".", "..") or name == MARKER:
            raise ValueError(f"invalid side object name {name!r}: one plain name, not step-*")
        return name

    def write_side(self, name: str, data: bytes) -> None:
        """Write a small object at the store's root, beside the step folders (never listed
        as a checkpoint: :meth:`checkpoints` reads ``step-*`` folders only)."""
        self._put(self._side_key(name), data)

    def read_side(self, name: str) -> bytes | None:
        """A side object's bytes, or None when there is none."""
        try:
            return self._get(self._side_key(name))
        except FileNotFoundError:
            return None

    def checkpoints(self) -> list[CheckpointInfo]:
        """Every complete checkpoint, oldest step first."""
        return self._scan()[0]

    def at_step(self, step: int) -> CheckpointInfo | None:
        """The complete checkpoint of ``step``, or None (absent, or cut mid-write)."""
        return self._complete(step, self._list())

    def latest(self) -> CheckpointInfo | None:
        """The checkpoint to resume from: the complete one with the highest step."""
        complete = self.checkpoints()
        return complete[-1] if complete else None

    def read(self, info: CheckpointInfo, name: str) -> bytes:
        """One file of a checkpoint."""
        if name not in info.files:
            raise KeyError(f"checkpoint {info.uri} has no file {name!r}")
        return self._get(f"{step_dir(info.step)}/{name}")

    def read_all(self, info: CheckpointInfo) -> dict[str, bytes]:
        """Every file of a checkpoint, by name."""
        return {name: self.read(info, name) for name in info.files}

    def download(self, info: CheckpointInfo, destination: str | os.PathLike[str]) -> Path:
        """Copy a checkpoint's files into ``destination`` (created); returns it."""
        dest = Path(destination)
        for name, data in self.read_all(info).items():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return dest

    def prune(self, keep: int) -> list[int]:
        """Keep the newest ``keep`` complete checkpoints; delete older ones and crash debris.

        Incomplete folders *below* the newest complete step are leftovers of an interrupted
        write or prune and go too. Incomplete folders above it are left alone: the single
        writer overwrites them when it reaches that step again. Returns the deleted steps.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (got {keep})")
        complete, folders = self._scan()
        if not complete:
            return []
        newest = complete[-1].step
        kept = {c.step for c in complete[-keep:]}
        doomed = sorted(s for s in folders if s not in kept and s < newest)
        for step in doomed:
            marker = f"{step_dir(step)}/{MARKER}"
            keys = folders[step]
            if marker in keys:
                self._delete([marker])
            rest = [k for k in keys if k != marker]
            if rest:
                self._delete(rest)
        return doomed


class LocalCheckpointStore(CheckpointStore):
    """Checkpoints in a folder (a local disk, or a shared file system such as EFS)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(normalize_checkpoint_uri(str(path)))
        super().__init__(str(self.root))

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _put(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def _list(self) -> dict[str, int]:
        if not self.root.is_dir():
            return {}
        out: dict[str, int] = {}
        for dirpath, _dirs, filenames in os.walk(self.root):
            for name in filenames:
                p = Path(dirpath) / name
                try:
                    out[p.relative_to(self.root).as_posix()] = p.stat().st_size
                except FileNotFoundError:  # deleted while listing
                    continue
        return out

    def _delete(self, keys: Iterable[str]) -> None:
        parents: set[Path] = set()
        for key in keys:
            p = self._path(key)
            p.unlink(missing_ok=True)
            parents.add(p.parent)
        for parent in sorted(parents, key=lambda q: len(q.parts), reverse=True):
            while parent != self.root and parent.is_relative_to(self.root):
                try:
                    parent.rmdir()
                except OSError:  # not empty (or already gone)
                    break
                parent = parent.parent


class S3CheckpointStore(CheckpointStore):
    """Checkpoints under ``s3://bucket/prefix`` through boto3.

    Credentials and endpoint come from boto3's usual chain (IRSA/instance role on EKS; the
    standard ``AWS_ENDPOINT_URL`` for S3-compatible stores and for tests against moto).
    """

    def __init__(self, uri: str, client: Any | None = None) -> None:
        uri = normalize_checkpoint_uri(uri)
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        super().__init__(uri)
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    def __getstate__(self) -> dict[str, Any]:
        # boto3 clients do not pickle; a store shipped to a Ray worker builds its own.
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", config=Config(retries={"max_attempts": 8, "mode": "standard"})
            )
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def _get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)}") from None
        return response["Body"].read()

    def _list(self) -> dict[str, int]:
        base = f"{self.prefix}/" if self.prefix else ""
        out: dict[str, int] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(base) :]] = int(obj["Size"])
        return out

    def _delete(self, keys: Iterable[str]) -> None:
        batch = [{"Key": self._key(k)} for k in keys]
        for i in range(0, len(batch), 1000):
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch[i : i + 1000], "Quiet": True}
            )
            if errors := response.get("Errors"):
                raise OSError(f"S3 delete failed for {len(errors)} objects: {errors[:3]}")


def open_store(uri: str) -> CheckpointStore:
    """The store for an ``s3://`` URI or a local path (``file://`` accepted)."""
    if uri.strip().startswith("s3://"):
        return S3CheckpointStore(uri)
    return LocalCheckpointStore(uri)


def find_checkpoint(uri: str) -> tuple[CheckpointStore, CheckpointInfo]:
    """The complete checkpoint a warm start names: one checkpoint, or a folder of them.

    ``uri`` is either one checkpoint (``.../step-000000000040``, what another job's
    ``status.lastCheckpoint.uri`` shows) or a TrainingJob's checkpoint folder (its newest
    complete checkpoint is taken). Raises ``FileNotFoundError`` when there is none: a warm
    start that was asked for and silently became a fresh start would train the wrong model.
    """
    norm = uri.rstrip("/")
    head, _, last = norm.rpartition("/")
    if head and (m := _STEP_DIR.match(last)):
        store = open_store(head)
        info = store.at_step(int(m.group(1)))
    else:
        store = open_store(norm)
        info = store.latest()
    if info is None:
        raise FileNotFoundError(
            f"no complete checkpoint at {uri} (checkpoint.resumeFrom): name a checkpoint "
            f"folder such as <uri>/{step_dir(0)}, or a TrainingJob's checkpoint folder"
        )
    return store, info
