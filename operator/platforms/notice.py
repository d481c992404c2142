"""Delivering a reclaim notice: the notice object written into the attempt's checkpoint folder.

Both edges call :func:`deliver_notice` (through ``trainingjob_rounds``' ``deliver``): the Kopf
handler with ``local_paths=False`` (a path URI names storage mounted in the Ray pods, not in
the operator's pod: writing it there would reach no one, so it is refused with a message the
status shows), the local runner with ``local_paths=True`` (the same machine's folders).

On Kubernetes the write uses the operator's own AWS credentials (boto3's chain: IRSA on EKS,
``AWS_ENDPOINT_URL`` for an S3-compatible store). It needs ``s3:PutObject`` on
``<checkpoint base>/*/_mlplane_notice.json`` only (docs/spot.md gives the IAM policy).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from mlplane.monitoring.notice import NOTICE_FILE, encode
from mlplane.operator.reconcile.notice import NoticeDelivery

log = logging.getLogger(__name__)


#: The longest the operator waits on S3 for one notice write (seconds per try, two tries): a
#: hung object store must not hold the reconcile round; a failed write is retried next round.
S3_TIMEOUT_SECONDS = 5.0


@functools.lru_cache(maxsize=1)
def _s3_client() -> Any:
    """One bounded client per process: credentials are resolved once, not per notice."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    return boto3.client("s3", config=Config(
        connect_timeout=S3_TIMEOUT_SECONDS, read_timeout=S3_TIMEOUT_SECONDS,
        retries={"total_max_attempts": 2, "mode": "standard"},
    ))  # fmt: skip


def _write_s3(uri: str, data: bytes, client: Any) -> None:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    key = f"{prefix}/{NOTICE_FILE}" if prefix else NOTICE_FILE
    client.put_object(Bucket=bucket, Key=key, Body=data)


def _write_folder(uri: str, data: bytes) -> None:
    """Beside the checkpoints, atomically (a reader never sees half a notice)."""
    folder = Path(uri.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, folder / NOTICE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def deliver_notice(
    delivery: NoticeDelivery, *, local_paths: bool, s3_client: Any = None
) -> str | None:
    """Write the notice object; None when it landed, else why not (for the status).

    ``s3_client``: a boto3 S3 client (default: one bounded by :data:`S3_TIMEOUT_SECONDS`).
    The key is the one ``mlplane.training``'s checkpoint store reads (``read_side``); the
    operator image has no training runtime, so the write is done here.
    """
    uri = delivery.uri.strip().rstrip("/")
    s3 = uri.startswith("s3://")
    if not local_paths and not s3:
        return (
            f"checkpoint folder {delivery.uri} is a path in the Ray pods, which the operator "
            "cannot write: use an s3:// checkpoint.uri for checkpoint-on-notice"
        )
    data = encode(delivery.document)
    try:
        if s3:
            _write_s3(uri, data, s3_client or _s3_client())
        else:
            _write_folder(uri, data)
    except Exception as exc:  # boto3/botocore or OS errors: said in status, retried
        log.warning("reclaim notice %s not written to %s: %s", delivery.id, delivery.uri, exc)
        return f"{type(exc).__name__}: {exc}"
    log.info("reclaim notice %s written to %s/%s", delivery.id, delivery.uri, NOTICE_FILE)
    return None
