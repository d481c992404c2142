"""Telling the operator that an attempt died of an outage, not of its code.

A TrainingJob spends ``backoffLimit`` on attempts whose code failed. An attempt whose driver
died because MLflow or the checkpoint store (S3) could not be reached is not the code's fault;
the operator must not spend that budget on it, and should wait for the outage to pass rather
than retry at once. The only thing the operator reads of a failed Ray job is its message, in
which Ray puts the driver's exit code and last log lines, so the driver ends with one line::

    mlplane.failure=infrastructure: <what could not be reached>

and exit code :data:`EXIT_OUTAGE` (75, ``EX_TEMPFAIL``: "try again later"). MLflow cannot be
used for this: it may be what is down.

Wrap the entrypoint's ``main`` (the examples do)::

    if __name__ == "__main__":
        sys.exit(exit_code(main))

What counts as an outage (:func:`outage_of`, following ``__cause__``/``__context__`` and a Ray
task error's ``cause``): MLflow answering 5xx/429 or not at all, S3 (botocore) unreachable,
timing out or answering 5xx/throttling, and Python's own connection and timeout errors. A 4xx
(no such bucket, access denied, a deleted run) is a configuration or code problem: it is left
to fail as one, and spends ``backoffLimit`` like any other.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: The operator's ``OUTAGE_MARKER`` (``operator/reconcile/trainingjob.py``) is the same text.
OUTAGE_MARKER = "mlplane.failure=infrastructure"
#: sysexits' EX_TEMPFAIL: a temporary failure, the caller should try again later.
EXIT_OUTAGE = 75

_S3_RETRYABLE = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestTimeTooSkewed",
}
#: pyarrow's S3 filesystem (Ray Train's storage) reports these AWS error kinds in OSError text.
_ARROW_S3_OUTAGES = ("NETWORK_CONNECTION", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "INTERNAL_FAILURE")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        cause = getattr(item, "cause", None)  # ray.exceptions.RayTaskError
        todo.extend([item.__cause__, item.__context__])
        if isinstance(cause, BaseException):
            todo.append(cause)


def _one(exc: BaseException) -> str | None:
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if module.startswith("ray."):
        return None  # a task error that is also its cause's type: judged by its ``cause``
    if module.startswith("mlflow") and hasattr(exc, "get_http_status_code"):
        status = exc.get_http_status_code()
        if status >= 500 or status == 429:
            return f"MLflow failed or could not be reached ({name}: {_short(exc)})"
        return None
    if module.startswith(("botocore", "boto3")):
        response = getattr(exc, "response", None)
        if isinstance(response, dict):  # ClientError: S3 answered
            error = response.get("Error") or {}
            code = str(error.get("Code", ""))
            http = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            if code in _S3_RETRYABLE or int(http) >= 500:
                return f"S3 failed ({code or http}: {_short(exc)})"
            return None
        if any(part in name for part in ("Connect", "Timeout", "Endpoint", "Connection")):
            return f"S3 could not be reached ({name}: {_short(exc)})"
        return None
    if module.startswith(("requests", "urllib3")) and any(
        part in name for part in ("Connection", "Timeout", "MaxRetry", "ProtocolError")
    ):
        return f"a server could not be reached ({name}: {_short(exc)})"
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"a server could not be reached ({name}: {_short(exc)})"
    if isinstance(exc, OSError) and any(kind in str(exc) for kind in _ARROW_S3_OUTAGES):
        return f"S3 could not be reached ({name}: {_short(exc)})"
    return None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def outage_of(exc: BaseException) -> str | None:
    """What could not be reached, if ``exc`` (or what caused it) is an outage; else None."""
    for item in _chain(exc):
        found = _one(item)
        if found is not None:
            return found
    return None


def exit_code(main: Callable[[], int | None]) -> int:
    """Run ``main``; an outage becomes the marker line and :data:`EXIT_OUTAGE`.

    Anything else propagates unchanged (Python prints it and exits 1), so a bug still fails
    the attempt as a code failure.
    """
    try:
        return int(main() or 0)
    except Exception as exc:
        what = outage_of(exc)
        if what is None:
            raise
        log.error("training stopped by an outage", exc_info=exc)
        sys.stderr.flush()
        # last line of the driver's output: Ray's job message keeps the last lines
        print(f"{OUTAGE_MARKER}: {what}", file=sys.stderr, flush=True)
        return EXIT_OUTAGE
