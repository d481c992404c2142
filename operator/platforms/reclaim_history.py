"""Where the operator keeps its reclaim history across restarts: one small port, two adapters.

The history itself (``monitoring/spot.py``) is pure: a mapping in, a mapping out, and a stored
form of string keys and values. Here it is kept:

- on Kubernetes in a ConfigMap the operator owns in its own namespace
  (``mlplane-reclaim-history``; the chart grants get/create/patch on ConfigMaps there);
- on the local platform in ``<state-dir>/reclaim-history.json``.

:class:`ReclaimHistoryKeeper` sits in front of either: it loads once (lazily), hands the reconcile
the current history, and writes a round's samples only when ``spot.worth_saving`` says they
change the estimate (a new reclaim, ten more node-minutes, an attempt's end), so a running spot
job costs one write per ten minutes. A failed read or write is logged and retried later: the
estimate falls back to the prior (or the last history read), never stops a reconcile.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from mlplane.monitoring import spot
from mlplane.operator.reconcile.spot import ReclaimSample

log = logging.getLogger(__name__)

CONFIGMAP_NAME = "mlplane-reclaim-history"
FILE_NAME = "reclaim-history.json"


class HistoryStore(Protocol):
    """The port: read and write the stored form (``spot.dump_history``)."""

    def load(self) -> Mapping[str, str] | None: ...

    def save(self, data: Mapping[str, str]) -> None: ...


class FileHistoryStore:
    """The local adapter: a JSON file, replaced atomically (a crash never leaves half of it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Mapping[str, str] | None:
        if not self.path.exists():
            return None
        return dict(json.loads(self.path.read_text()))

    def save(self, data: Mapping[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(data)))
        os.replace(tmp, self.path)


class ConfigMapHistoryStore:
    """The Kubernetes adapter: a ConfigMap in the operator's namespace."""

    def __init__(
        self, core_api: Callable[[], Any], namespace: str, name: str = CONFIGMAP_NAME
    ) -> None:
        """``core_api`` gives a core v1 API client when called (each read or write: the
        handlers build their clients per round too)."""
        self.core = core_api
        self.namespace = namespace
        self.name = name

    def load(self) -> Mapping[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.core().read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = found.get("data") if isinstance(found, dict) else found.data
        return dict(data or {})

    def save(self, data: Mapping[str, str]) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "mlplane"},
            },
            "data": dict(data),
        }
        core = self.core()
        try:
            core.patch_namespaced_config_map(self.name, self.namespace, {"data": dict(data)})
        except ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespaced_config_map(self.namespace, body)


class ReclaimHistoryKeeper:
    """The history in memory, loaded once from its store and written back when worth it."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._history: dict[str, spot.PoolHistory] | None = None

    def history(self) -> dict[str, spot.PoolHistory]:
        """The current history (empty, i.e. the prior, while the store cannot be read)."""
        with self._lock:
            return dict(self._loaded())

    def _loaded(self) -> dict[str, spot.PoolHistory]:
        if self._history is None:
            try:
                self._history = spot.load_history(self.store.load())
            except ValueError as exc:  # unreadable: start again from the prior, say so
                log.error("reclaim history: %s; starting from the prior", exc)
                self._history = {}
            except Exception as exc:  # an outage: the prior this round, read again next
                log.warning("reclaim history could not be read (%s); using the prior", exc)
                return {}
        return self._history

    def offer(self, samples: Iterable[ReclaimSample]) -> bool:
        """Record the samples and write the store if any changes the estimate; True if written."""
        samples = list(samples)
        if not samples:
            return False
        with self._lock:
            current = self._loaded()
            if self._history is None:
                return False  # not readable now: never overwrite a history we could not read
            if not any(spot.worth_saving(current, s.pool, s.contribution, s.exposure)
                       for s in samples):  # fmt: skip
                return False
            new = current
            for sample in samples:
                new = spot.record(new, sample.pool, sample.contribution, sample.exposure)
            try:
                self.store.save(spot.dump_history(new))
            except Exception as exc:  # the next round offers the same samples again
                log.warning("reclaim history could not be written: %s", exc)
                return False
            self._history = new
            return True


def file_keeper(state_dir: Path) -> ReclaimHistoryKeeper:
    """The local platform's keeper: ``<state-dir>/reclaim-history.json``."""
    return ReclaimHistoryKeeper(FileHistoryStore(state_dir / FILE_NAME))
