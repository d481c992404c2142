"""Synthetic traffic for a local ModelDeployment: predictions, and outcomes posted as feedback.

What ``mlplane traffic`` runs, so that a demo (or a person trying an ABTest) can watch a test
conclude without an application in front of the model: each request comes from one of ``users``
sticky users (the ``x-user-id`` header, or the ABTest's bucketing header), carries one row of
the given body, and each answer's request id gets a 0/1 outcome drawn with the conversion rate
given for the variant that served it (seeded, so a run is repeatable). Bounded by a request
count; it stops early once ``stop()`` says so (e.g. the ABTest concluded).
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrafficReport:
    """What happened: requests and failures, answers per variant and version, outcomes."""

    requests: int = 0
    failures: Counter[int] = field(default_factory=Counter)
    served: Counter[tuple[str, int]] = field(default_factory=Counter)
    conversions: Counter[str] = field(default_factory=Counter)
    feedback_failures: int = 0
    errors: list[str] = field(default_factory=list)


def _post(url: str, body: Any, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data, {"content-type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read()[:500].decode(errors="replace")}


def run_traffic(
    endpoint: str,
    records: Sequence[Mapping[str, Any]],
    *,
    requests: int,
    conversion: Mapping[str, float],
    users: int = 500,
    header: str = "x-user-id",
    seed: int = 1,
    stop: Callable[[], bool] | None = None,
    progress: Callable[[TrafficReport], None] | None = None,
    every: int = 200,
) -> TrafficReport:
    """Send up to ``requests`` predictions (one row each) and their outcomes.

    ``conversion`` maps a variant name to its probability of outcome 1; variants not named
    (e.g. ``primary`` once a test is over) post no feedback. ``stop`` and ``progress`` are
    called every ``every`` requests.
    """
    if not records:
        raise ValueError("no records to send")
    rng = random.Random(seed)
    report = TrafficReport()
    for i in range(requests):
        user = f"user-{rng.randrange(users)}"
        row = records[i % len(records)]
        code, answer = _post(f"{endpoint}/v1/predict", {"records": [row]}, {header: user})
        report.requests += 1
        if code != 200:
            report.failures[code] += 1
            if len(report.errors) < 5:
                report.errors.append(str(answer.get("error", answer))[:300])
        else:
            variant = str(answer.get("variant"))
            report.served[(variant, int(answer.get("version") or 0))] += 1
            if variant in conversion and answer.get("requestId"):
                outcome = int(rng.random() < conversion[variant])
                feedback = {"requestId": answer["requestId"], "outcome": outcome}
                fb, _ = _post(f"{endpoint}/v1/feedback", feedback, {})
                if fb == 200:
                    report.conversions[variant] += outcome
                else:
                    report.feedback_failures += 1
        if (i + 1) % every == 0:
            if progress is not None:
                progress(report)
            if stop is not None and stop():
                break
    return report
