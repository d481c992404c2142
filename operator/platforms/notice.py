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

import logging

from mlplane.monitoring.notice import NOTICE_FILE, encode
from mlplane.operator.reconcile.notice import NoticeDelivery

log = logging.getLogger(__name__)


def deliver_notice(delivery: NoticeDelivery, *, local_paths: bool) -> str | None:
    """Write the notice object; None when it landed, else why not (for the status)."""
    from mlplane.training.checkpoints import open_store

    if not local_paths and not delivery.uri.startswith("s3://"):
        return (
            f"checkpoint folder {delivery.uri} is a path in the Ray pods, which the operator "
            "cannot write: use an s3:// checkpoint.uri for checkpoint-on-notice"
        )
    try:
        open_store(delivery.uri).write_side(NOTICE_FILE, encode(delivery.document))
    except Exception as exc:  # boto3/botocore or OS errors: said in status, retried
        log.warning("reclaim notice %s not written to %s: %s", delivery.id, delivery.uri, exc)
        return f"{type(exc).__name__}: {exc}"
    log.info("reclaim notice %s written to %s/%s", delivery.id, delivery.uri, NOTICE_FILE)
    return None
