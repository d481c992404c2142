"""The drift tap: live inputs counted against the served model's training reference, per window.

Off the request path: router replicas buffer the features of answered requests (with the time
each was seen) and ship them every flush (~0.5 s) to the app's single ``monitor`` replica, which
adds them here in one vectorised call per batch (:class:`mlplane.monitoring.sketches.DriftSketch`)
in a worker thread. One tap serves the whole app, so a window holds every replica's traffic
and no merge step is needed. When a window closes (time passed its end, on a batch or on the
monitor's timer tick) it is evaluated with :func:`mlplane.monitoring.drift.evaluate`; the result
feeds the ``mlplane_feature_drift_*`` gauges and ``GET /v1/drift``.

The reference is the profile training logged beside the model
(``mlplane/reference_profile.json`` in the model version's run) of the **control** variant
(variant 0): every variant sees the same traffic, and drift is about inputs moving away from
what the production model was trained on. When the control's version changes the tap starts
over on the new version's profile (rows tagged with another version are dropped and counted).
A version without a profile reports ``status: "NoReference"`` and exports no drift series.

How the ModelDeployment's ``monitoring.drift`` maps onto :class:`~mlplane.monitoring.drift.
DriftConfig` (the threshold is already resolved by the operator):

- ``StatisticalTest``: ``alpha = threshold`` — a feature drifts when its Holm-adjusted p-value
  (binned KS for numeric, chi-square of independence for categorical) is below it;
- ``PSI`` / ``JensenShannon``: the test at the default alpha (0.01) AND ``psi >= threshold`` /
  ``js >= threshold`` — an effect-size floor on top of significance (see drift.py for why not
  the effect size alone);
- ``min_samples``: no verdict for a window with fewer rows.

Thread-safe: every method takes the tap's lock (adds run in a worker thread while the event loop
answers ``/v1/drift`` and ``/metrics``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from mlplane.monitoring.drift import DriftConfig, FeatureDrift, evaluate
from mlplane.monitoring.profile import PROFILE_ARTIFACT_PATH, Profile
from mlplane.monitoring.sketches import DriftSketch, Window
from mlplane.serving.config import DriftSettings

__all__ = ["DriftTap", "Evaluation", "drift_config", "load_reference_profile"]

#: Closed windows whose evaluations are kept for ``/v1/drift`` (the operator counts consecutive
#: drifted windows from them).
HISTORY = 12


def drift_config(settings: DriftSettings) -> DriftConfig:
    """The drift decision settings for a ModelDeployment's ``monitoring.drift``."""
    if settings.method == "StatisticalTest":
        return DriftConfig(alpha=settings.threshold, min_samples=settings.min_samples)
    if settings.method == "PSI":
        return DriftConfig(psi_threshold=settings.threshold, min_samples=settings.min_samples)
    if settings.method == "JensenShannon":
        return DriftConfig(js_threshold=settings.threshold, min_samples=settings.min_samples)
    raise ValueError(f"unknown drift method {settings.method!r}")


def load_reference_profile(tracking_uri: str, model_name: str, version: int) -> Profile | None:
    """The reference profile logged in the run of ``model_name`` version ``version``, or None.

    None when the version has no run or the run has no profile artifact (a model registered by
    hand); other errors (registry unreachable) raise, so the caller retries later.
    """
    import mlflow  # lazy: only the monitor replica talks to MLflow for profiles

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    model_version = client.get_model_version(model_name, str(version))
    if not model_version.run_id:
        return None
    folder = PROFILE_ARTIFACT_PATH.rpartition("/")[0]
    listed = {a.path for a in client.list_artifacts(model_version.run_id, folder)}
    if PROFILE_ARTIFACT_PATH not in listed:
        return None
    path = mlflow.artifacts.download_artifacts(
        run_id=model_version.run_id, artifact_path=PROFILE_ARTIFACT_PATH, tracking_uri=tracking_uri
    )
    with open(path, encoding="utf-8") as f:
        return Profile.from_json(f.read())


@dataclass(frozen=True)
class Evaluation:
    """One closed window's verdicts."""

    version: int
    window_start: float
    window_end: float
    rows: int
    evaluated_at: float
    results: tuple[FeatureDrift, ...]

    @property
    def drifted(self) -> list[str]:
        return [r.feature for r in self.results if r.drifted]

    @property
    def has_verdict(self) -> bool:
        return any(r.drifted is not None for r in self.results)

    def to_dict(self, *, features: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "windowStart": self.window_start,
            "windowEnd": self.window_end,
            "rows": self.rows,
            "evaluatedAt": self.evaluated_at,
            "drifted": self.drifted,
            "anyDrifted": bool(self.drifted),
            "hasVerdict": self.has_verdict,
        }
        if features:
            out["features"] = [r.to_dict() for r in self.results]
        return out


class DriftTap:
    """Per-window sketches of live inputs against one reference version (see the module doc)."""

    def __init__(self, settings: DriftSettings, *, history: int = HISTORY) -> None:
        self.settings = settings
        self.config = drift_config(settings)
        self._lock = threading.Lock()
        self._version: int | None = None
        self._profile: Profile | None = None
        self._sketch: DriftSketch | None = None
        self._status = "Disabled" if not settings.enabled else "Waiting"
        self._reason = "drift monitoring is off" if not settings.enabled else "no traffic yet"
        self._history: deque[Evaluation] = deque(maxlen=history)
        self._consecutive = 0
        #: Rows dropped: for another version than the reference, or before a profile loaded.
        self.dropped_rows = 0

    @property
    def reference_version(self) -> int | None:
        return self._version

    def set_reference(self, version: int, profile: Profile | None, reason: str = "") -> None:
        """Start over on ``version``'s profile (None: that version has no reference)."""
        with self._lock:
            self._version = version
            self._profile = profile
            self._history.clear()
            self._consecutive = 0
            if profile is None:
                self._sketch = None
                self._status = "NoReference"
                self._reason = reason or f"model version {version} has no reference profile"
            else:
                self._sketch = DriftSketch(
                    profile, window_seconds=self.settings.window_s, keep_closed=1
                )
                self._status = "Ok"
                self._reason = ""

    def _evaluate(self, windows: Sequence[Window], now: float) -> list[Evaluation]:
        assert self._profile is not None and self._version is not None
        out = []
        for window in windows:
            results = evaluate(self._profile, window, self.config)
            ev = Evaluation(
                self._version, window.start, window.end, window.rows, now, tuple(results)
            )
            self._history.append(ev)
            if ev.drifted:
                self._consecutive += 1
            elif ev.has_verdict:
                self._consecutive = 0
            out.append(ev)
        return out

    def add(
        self,
        version: int,
        columns: Mapping[str, Sequence[Any]],
        timestamps: Sequence[float],
        now: float,
    ) -> list[Evaluation]:
        """Count rows served under reference ``version``; evaluate the windows that closed."""
        n = len(timestamps)
        with self._lock:
            if self._sketch is None or version != self._version:
                self.dropped_rows += n
                return []
            closed = self._sketch.add(dict(columns), np.asarray(timestamps, dtype=np.float64))
            closed += self._sketch.advance(now)
            return self._evaluate(closed, now)

    def advance(self, now: float) -> list[Evaluation]:
        """Close (and evaluate) the current window if ``now`` is past its end."""
        with self._lock:
            if self._sketch is None:
                return []
            return self._evaluate(self._sketch.advance(now), now)

    def latest(self) -> Evaluation | None:
        with self._lock:
            return self._history[-1] if self._history else None

    def window_samples(self) -> int:
        with self._lock:
            current = self._sketch.current if self._sketch is not None else None
            return current.rows if current is not None else 0

    def _summary(self, latest: Evaluation | None) -> dict[str, Any]:
        """The fields of a ModelDeployment's ``status.drift``, from the latest window.

        ``score`` is the largest effect size over the features: Jensen-Shannon distance for the
        ``JensenShannon`` method, PSI otherwise (the statistical test's own statistics are not
        comparable across numeric and categorical features; PSI is, and it is what dashboards
        show beside the verdict).
        """
        if latest is None:
            return {
                "score": None,
                "driftedFeatures": [],
                "consecutiveDriftedWindows": self._consecutive,
                "lastEvaluated": None,
            }
        key = "js" if self.settings.method == "JensenShannon" else "psi"
        values = [getattr(r, key) for r in latest.results if getattr(r, key) is not None]
        return {
            "score": max(values) if values else None,
            "scoreMethod": key,
            "driftedFeatures": latest.drifted,
            "consecutiveDriftedWindows": self._consecutive,
            "lastEvaluated": datetime.fromtimestamp(latest.evaluated_at, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }

    def report(self) -> dict[str, Any]:
        """What ``GET /v1/drift`` answers; ``summary`` is shaped like ``status.drift``."""
        with self._lock:
            current = self._sketch.current if self._sketch is not None else None
            latest = self._history[-1] if self._history else None
            return {
                "summary": self._summary(latest),
                "enabled": self.settings.enabled,
                "status": self._status,
                "reason": self._reason,
                "method": self.settings.method,
                "threshold": self.settings.threshold,
                "windowSeconds": self.settings.window_s,
                "minSamples": self.settings.min_samples,
                "referenceVersion": self._version,
                "currentWindow": None
                if current is None
                else {"start": current.start, "end": current.end, "rows": current.rows},
                "consecutiveDriftedWindows": self._consecutive,
                "lastEvaluation": None if latest is None else latest.to_dict(),
                "history": [ev.to_dict(features=False) for ev in self._history],
                "droppedRows": self.dropped_rows,
                "lateRows": self._sketch.late_rows if self._sketch is not None else 0,
            }
