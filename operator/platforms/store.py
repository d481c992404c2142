"""The local platform's API server: resources as YAML files under ``.mlplane/resources/``.

``mlplane apply`` writes the user's part (spec, labels) and the runner writes ``status``, the
same split as on Kubernetes. Every read-modify-write holds one file lock, so a spec applied
while the runner writes a status is never lost, and files are replaced atomically (a crash
leaves the old or the new version, never half of one). Each object gets what the API server
would give it: a uid, a ``generation`` that moves when the spec changes, a creation time.
Events (what ``kubectl describe`` shows) are kept per object, the newest 100.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mlplane.crds import BY_KIND

MAX_EVENTS = 100


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NotFound(LookupError):
    """No such object in the store."""


class Store:
    """mlplane objects of one local platform (a state folder)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir.resolve() / "resources"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _path(self, kind: str, namespace: str, name: str, suffix: str = ".yaml") -> Path:
        if kind not in BY_KIND:
            raise ValueError(f"unknown kind {kind!r} (mlplane kinds: {', '.join(BY_KIND)})")
        return self.root / BY_KIND[kind].plural / namespace / f"{name}{suffix}"

    @staticmethod
    def _write(path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path) -> Any:
        return yaml.safe_load(path.read_text())

    # --- the user's side -----------------------------------------------------------------------

    def apply(self, body: dict[str, Any]) -> str:
        """Create or update from a validated manifest; ``created``/``configured``/``unchanged``."""
        meta = body.get("metadata") or {}
        kind, name = body["kind"], meta["name"]
        namespace = meta.get("namespace") or "default"
        path = self._path(kind, namespace, name)
        with self._locked():
            if path.exists():
                current = self._read(path)
                old_meta = current["metadata"]
                new_meta = {**old_meta, "labels": meta.get("labels") or {},
                            "annotations": meta.get("annotations") or {}}  # fmt: skip
                if current.get("spec") == body.get("spec") and new_meta == old_meta:
                    return "unchanged"
                if current.get("spec") != body.get("spec"):
                    new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
                current.update(metadata=new_meta, spec=body.get("spec"))
                self._write(path, current)
                return "configured"
            stored = {
                "apiVersion": body["apiVersion"],
                "kind": kind,
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "generation": 1,
                    "creationTimestamp": _now(),
                    "labels": meta.get("labels") or {},
                    "annotations": meta.get("annotations") or {},
                },
                "spec": body.get("spec"),
            }
            if meta.get("ownerReferences"):  # what the runner creates for a parent
                stored["metadata"]["ownerReferences"] = meta["ownerReferences"]
            self._write(path, stored)
            return "created"

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """Remove an object (and its events); the runner tears down what it had started."""
        path = self._path(kind, namespace, name)
        with self._locked():
            if not path.exists():
                raise NotFound(f"{kind} {namespace}/{name} not found")
            body = self._read(path)
            path.unlink()
            self._path(kind, namespace, name, ".events.yaml").unlink(missing_ok=True)
        return body

    # --- reads ---------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        path = self._path(kind, namespace, name)
        if not path.exists():
            raise NotFound(f"{kind} {namespace}/{name} not found")
        return self._read(path)

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind (in one namespace, or all), oldest name first."""
        base = self.root / BY_KIND[kind].plural
        pattern = f"{namespace}/*.yaml" if namespace else "*/*.yaml"
        out = []
        for path in sorted(base.glob(pattern)):
            if path.name.endswith(".events.yaml"):
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                out.append(self._read(path))
        return out

    # --- the runner's side ---------------------------------------------------------------------

    def write_status(self, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Replace the status of the object ``body`` was read from; False if it is gone.

        Only the status is written: a spec applied meanwhile is kept.
        """
        meta = body["metadata"]
        path = self._path(body["kind"], meta.get("namespace") or "default", meta["name"])
        with self._locked():
            if not path.exists():
                return False
            current = self._read(path)
            if current["metadata"].get("uid") != meta.get("uid"):
                return False  # deleted and created again: not our object any more
            if current.get("status") == status:
                return True
            current["status"] = status
            self._write(path, current)
            return True

    def add_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event about an object (shown by ``mlplane describe``)."""
        meta = body["metadata"]
        path = self._path(body["kind"], meta.get("namespace") or "default", meta["name"],
                          ".events.yaml")  # fmt: skip
        with self._locked():
            events = self._read(path) if path.exists() else []
            events.append({"time": _now(), "type": type_, "reason": reason, "message": message})
            self._write(path, events[-MAX_EVENTS:])

    def events(self, kind: str, namespace: str, name: str) -> builtins.list[dict[str, Any]]:
        path = self._path(kind, namespace, name, ".events.yaml")
        return self._read(path) if path.exists() else []
