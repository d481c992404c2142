"""Live sketches: per-window histograms of serving inputs on a reference profile's bins.

The serving drift tap owns one :class:`DriftSketch` per model version. Each request batch goes
through :meth:`DriftSketch.add` with the time it was seen; the sketch counts every feature on the
reference's bins for the window that time falls in. When time moves past a window's end, the
window closes and is handed back to the caller, who evaluates it
(:func:`mlplane.monitoring.drift.evaluate`) and exports the scores.

Properties the rest of the system relies on:

* **Bounded memory.** A window is one flat ``int64`` array with, per feature, one slot per bin,
  one for missing values (``None``/``NaN``/``±inf``) and one for rows where the feature was
  *absent* from the batch (a schema break upstream, reported apart from plain nulls). Its size is
  ``sum(bins + 2)`` over features whatever the traffic; the sketch keeps the current window and
  at most ``keep_closed`` closed ones.
* **Vectorised.** ``add`` maps a whole column to bin codes with ``np.searchsorted`` and counts
  them with one ``np.bincount``; there is no Python loop over values, only over features (and the
  handful of windows a batch spans). The cost is therefore a fixed ~30 µs per feature per call
  plus a few ns per value (measured: 50 features, 1-row call ~1.7 ms, 1000-row call ~4.6 ms):
  a serving tap should buffer requests and call ``add`` once per ~second or ~1000 rows, passing
  per-row timestamps so rows still land in the right window.
* **Pure.** Time is an argument (a scalar for the batch or one timestamp per row, in seconds);
  nothing here reads a clock. Windows are aligned: window ``k`` is
  ``[origin + k*window_seconds, origin + (k+1)*window_seconds)``.
* **Late rows are dropped, not merged.** A row whose timestamp falls before the current window
  is counted in :attr:`DriftSketch.late_rows` and discarded: closed windows have already been
  reported, and reopening them would make their scores change after the fact.
* **No empty windows.** A quiet period produces no windows (there would be nothing to judge);
  :meth:`DriftSketch.advance` closes the current window on a timer tick without traffic.
* **Mergeable.** Windows with the same bounds on the same profile add up (:meth:`Window.merge`),
  so counts from several serving replicas can be pooled before evaluation.

Unknown categories land in the feature's ``other`` bucket. Batches are a pandas DataFrame or a
mapping of 1-d arrays/lists (a mapping of scalars is a single record).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlplane.monitoring.profile import (
    FeatureProfile,
    Profile,
    batch_length,
    get_column,
)

#: Five-minute windows: at a few hundred requests per second that is ~10^5 rows, where the
#: defaults in :mod:`mlplane.monitoring.drift` detect shifts of a few hundredths of a standard
#: deviation, and short enough that an alert follows a bad deploy within minutes.
DEFAULT_WINDOW_SECONDS = 300.0
#: One hour of closed five-minute windows, enough for an alert's ``for:`` clause to look back on.
DEFAULT_KEEP_CLOSED = 12


@dataclass(frozen=True, eq=False)
class SketchLayout:
    """Where each feature's slots live in a window's flat count array.

    Per feature: ``n_bins`` value slots, then the missing slot, then the absent slot.
    """

    features: tuple[FeatureProfile, ...]
    offsets: tuple[int, ...]
    size: int

    @classmethod
    def from_profile(cls, profile: Profile) -> SketchLayout:
        offsets, pos = [], 0
        for f in profile.features:
            offsets.append(pos)
            pos += f.n_bins + 2
        return cls(tuple(profile.features), tuple(offsets), pos)

    def slot(self, name: str) -> tuple[FeatureProfile, int]:
        for f, off in zip(self.features, self.offsets, strict=True):
            if f.name == name:
                return f, off
        raise KeyError(f"feature {name!r} is not in the sketch")

    def compatible(self, other: SketchLayout) -> bool:
        return self is other or (
            self.offsets == other.offsets
            and len(self.features) == len(other.features)
            and all(a.same_bins(b) for a, b in zip(self.features, other.features, strict=True))
        )


class Window:
    """Counts of one time window: rows seen and, per feature, bins + missing + absent."""

    __slots__ = ("counts", "end", "layout", "rows", "start")

    def __init__(
        self,
        layout: SketchLayout,
        start: float,
        end: float,
        counts: np.ndarray | None = None,
        rows: int = 0,
    ) -> None:
        self.layout = layout
        self.start = float(start)
        self.end = float(end)
        if counts is None:
            counts = np.zeros(layout.size, dtype=np.int64)
        elif counts.shape != (layout.size,):
            raise ValueError(f"window counts have shape {counts.shape}, expected ({layout.size},)")
        self.counts = counts
        self.rows = int(rows)

    @property
    def closed(self) -> bool:
        return not self.counts.flags.writeable

    @property
    def nbytes(self) -> int:
        """Bytes held by the counts (constant for a given profile)."""
        return int(self.counts.nbytes)

    def histogram(self, name: str) -> np.ndarray:
        """Counts on the reference bins (numeric) or categories + other (categorical)."""
        f, off = self.layout.slot(name)
        return self.counts[off : off + f.n_bins]

    def nulls(self, name: str) -> int:
        f, off = self.layout.slot(name)
        return int(self.counts[off + f.n_bins])

    def absent(self, name: str) -> int:
        f, off = self.layout.slot(name)
        return int(self.counts[off + f.n_bins + 1])

    def missing(self, name: str) -> int:
        """Rows where the feature had no usable value: nulls plus absent."""
        return self.nulls(name) + self.absent(name)

    def merge(self, other: Window) -> Window:
        """Pool two windows with the same bounds on the same bins (e.g. two replicas)."""
        if not self.layout.compatible(other.layout):
            raise ValueError("cannot merge windows sketched on different profiles")
        if (self.start, self.end) != (other.start, other.end):
            raise ValueError(
                f"cannot merge window [{self.start}, {self.end}) with [{other.start}, {other.end})"
            )
        return _frozen(
            Window(
                self.layout,
                self.start,
                self.end,
                self.counts + other.counts,
                self.rows + other.rows,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly counts (for shipping a replica's window to an aggregator)."""
        return {
            "start": self.start,
            "end": self.end,
            "rows": self.rows,
            "features": {
                f.name: {
                    "counts": [int(c) for c in self.counts[off : off + f.n_bins]],
                    "nulls": int(self.counts[off + f.n_bins]),
                    "absent": int(self.counts[off + f.n_bins + 1]),
                }
                for f, off in zip(self.layout.features, self.layout.offsets, strict=True)
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], profile: Profile | SketchLayout) -> Window:
        layout = (
            profile if isinstance(profile, SketchLayout) else SketchLayout.from_profile(profile)
        )
        counts = np.zeros(layout.size, dtype=np.int64)
        feats = d["features"]
        for f, off in zip(layout.features, layout.offsets, strict=True):
            fd = feats[f.name]
            c = np.asarray(fd["counts"], dtype=np.int64)
            if c.shape != (f.n_bins,):
                raise ValueError(f"feature {f.name!r}: {c.size} counts, expected {f.n_bins}")
            counts[off : off + f.n_bins] = c
            counts[off + f.n_bins] = int(fd.get("nulls", 0))
            counts[off + f.n_bins + 1] = int(fd.get("absent", 0))
        return _frozen(cls(layout, d["start"], d["end"], counts, int(d["rows"])))

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Window([{self.start}, {self.end}), rows={self.rows}, {state})"


def _frozen(window: Window) -> Window:
    window.counts.setflags(write=False)
    return window


def count_batch(
    layout: SketchLayout,
    batch: Any,
    window_of_row: np.ndarray | None = None,
    n_windows: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Count a batch on the layout's bins: ``(counts[n_windows, size], rows[n_windows])``.

    ``window_of_row`` assigns each row to a window ``0..n_windows-1`` (rows assigned to
    ``n_windows`` are discarded); None puts every row in window 0. Vectorised per feature: bin
    codes by ``searchsorted``, then one ``bincount`` over ``window * slots + code``.
    """
    n = batch_length(batch)
    out = np.zeros((n_windows, layout.size), dtype=np.int64)
    if n == 0:
        return out, np.zeros(n_windows, dtype=np.int64)
    if window_of_row is None:
        rows = np.array([n], dtype=np.int64)
        if n_windows != 1:
            raise ValueError("n_windows must be 1 when window_of_row is None")
    else:
        window_of_row = np.asarray(window_of_row, dtype=np.int64)
        if window_of_row.shape != (n,):
            raise ValueError(f"{window_of_row.size} window ids for {n} rows")
        rows = np.bincount(window_of_row, minlength=n_windows + 1)[:n_windows]
    for f, off in zip(layout.features, layout.offsets, strict=True):
        column = get_column(batch, f.name)
        if column is None:
            out[:, off + f.n_bins + 1] += rows
            continue
        codes = f.codes(column)
        if codes.shape != (n,):
            raise ValueError(f"feature {f.name!r}: {codes.size} values for {n} rows")
        slots = f.n_bins + 1  # value bins + missing
        if window_of_row is None:
            out[0, off : off + slots] += np.bincount(codes, minlength=slots)
        else:
            flat = np.bincount(window_of_row * slots + codes, minlength=(n_windows + 1) * slots)
            out[:, off : off + slots] += flat.reshape(n_windows + 1, slots)[:n_windows]
    return out, rows


def sketch_once(
    profile: Profile, data: Any | Iterable[Any], start: float = 0.0, end: float = 0.0
) -> Window:
    """One closed window holding all of ``data`` (a batch, or an iterable of batches/chunks)."""
    layout = SketchLayout.from_profile(profile)
    window = Window(layout, start, end)
    batches = [data] if isinstance(data, Mapping) or hasattr(data, "columns") else data
    for batch in batches:
        counts, rows = count_batch(layout, batch)
        window.counts += counts[0]
        window.rows += int(rows[0])
    return _frozen(window)


class DriftSketch:
    """Rolling per-window histograms of live inputs on a reference profile's bins.

    Not thread-safe: keep one per replica (event loop), or guard ``add``/``advance`` with a lock.
    """

    def __init__(
        self,
        profile: Profile,
        *,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        keep_closed: int = DEFAULT_KEEP_CLOSED,
        origin: float = 0.0,
    ) -> None:
        if not (window_seconds > 0 and math.isfinite(window_seconds)):
            raise ValueError("window_seconds must be a positive finite number")
        if keep_closed < 0:
            raise ValueError("keep_closed must be >= 0")
        self.profile = profile
        self.layout = SketchLayout.from_profile(profile)
        self.window_seconds = float(window_seconds)
        self.origin = float(origin)
        self._current: Window | None = None
        self._current_index: int | None = None
        self._closed: deque[Window] = deque(maxlen=keep_closed)
        #: Rows whose timestamp fell before the current window (dropped).
        self.late_rows = 0

    @property
    def current(self) -> Window | None:
        """The open window (None before the first row or after :meth:`advance` closed it)."""
        return self._current

    @property
    def closed(self) -> tuple[Window, ...]:
        """Closed windows, oldest first (at most ``keep_closed``)."""
        return tuple(self._closed)

    @property
    def nbytes(self) -> int:
        """Bytes of counts held: O(features x bins x (1 + keep_closed)), independent of traffic."""
        windows = [*self._closed, *([self._current] if self._current is not None else [])]
        return sum(w.nbytes for w in windows)

    def window_index(self, timestamp: float | np.ndarray) -> np.ndarray:
        t = np.asarray(timestamp, dtype=np.float64)
        if not np.all(np.isfinite(t)):
            raise ValueError("timestamps must be finite numbers of seconds")
        return np.floor((t - self.origin) / self.window_seconds).astype(np.int64)

    def _new_window(self, index: int) -> Window:
        start = self.origin + index * self.window_seconds
        return Window(self.layout, start, start + self.window_seconds)

    def _close_current(self) -> Window | None:
        window = self._current
        if window is None:
            return None
        _frozen(window)
        self._closed.append(window)
        self._current = None
        self._current_index = None
        return window

    def advance(self, now: float) -> list[Window]:
        """Close the current window if ``now`` is past its end; returns what was closed."""
        if self._current_index is None:
            return []
        if int(self.window_index(now)) > self._current_index:
            closed = self._close_current()
            return [closed] if closed is not None else []
        return []

    def add(self, batch: Any, timestamp: float | np.ndarray) -> list[Window]:
        """Count a batch seen at ``timestamp`` (one for the batch, or one per row).

        Returns the windows this call closed (oldest first), for the caller to evaluate.
        """
        n = batch_length(batch)
        ts = np.asarray(timestamp, dtype=np.float64)
        if ts.ndim not in (0, 1):
            raise ValueError("timestamp must be a number or a 1-d array of one per row")
        if ts.ndim == 1 and ts.shape != (n,):
            raise ValueError(f"{ts.size} timestamps for {n} rows")
        if n == 0:
            return self.advance(float(ts.max())) if ts.size else []
        widx = self.window_index(ts)
        cur = self._current_index
        if widx.ndim == 0:
            w = int(widx)
            if cur is not None and w < cur:
                self.late_rows += n
                return []
            ids = np.array([w], dtype=np.int64)
            local = None
        else:
            late = widx < cur if cur is not None else np.zeros(n, dtype=bool)
            n_late = int(late.sum())
            self.late_rows += n_late
            if n_late == n:
                return []
            ids = np.unique(widx[~late])
            local = np.searchsorted(ids, widx)
            local[late] = ids.size  # discard slot
        counts, rows = count_batch(self.layout, batch, local, ids.size)

        closed: list[Window] = []
        for i, index in enumerate(ids.tolist()):
            if index != self._current_index:
                if (done := self._close_current()) is not None:
                    closed.append(done)
                self._current = self._new_window(index)
                self._current_index = index
            window = self._current
            assert window is not None
            window.counts += counts[i]
            window.rows += int(rows[i])
        return closed
