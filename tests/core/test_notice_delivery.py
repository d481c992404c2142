"""Delivering a reclaim notice (the edge both platforms share): where it lands, and what the
status is told when it cannot land."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectTimeoutError
from moto import mock_aws

from mlplane.monitoring.notice import NOTICE_FILE, parse_notice
from mlplane.operator.platforms import notice as edge
from mlplane.operator.reconcile.notice import NoticeDelivery
from mlplane.training.checkpoints import open_store

DOC = {"format": "mlplane.notice/v1", "id": "attempt-1-notice-1", "attempt": 1,
       "signal": "karpenter.sh/disrupted"}  # fmt: skip


def test_a_local_folder_gets_the_notice_beside_its_checkpoints(tmp_path):
    uri = str(tmp_path / "ck")
    assert edge.deliver_notice(NoticeDelivery("attempt-1-notice-1", uri, DOC),
                               local_paths=True) is None  # fmt: skip
    found = parse_notice(open_store(uri).read_side(NOTICE_FILE) or b"")
    assert found is not None and found.id == "attempt-1-notice-1"
    assert open_store(uri).checkpoints() == []


def test_on_kubernetes_a_path_is_refused_with_the_reason(tmp_path):
    why = edge.deliver_notice(NoticeDelivery("x", str(tmp_path / "ck"), DOC), local_paths=False)
    assert why is not None and "s3://" in why
    assert not (tmp_path / "ck").exists()  # nothing written in the operator's own filesystem


def test_s3_gets_the_notice(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    edge._s3_client.cache_clear()  # made under the mock, with its keys
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ckpt")
        assert edge.deliver_notice(NoticeDelivery("x", "s3://ckpt/job/u1", DOC),
                                   local_paths=False) is None  # fmt: skip
        body = boto3.client("s3", region_name="us-east-1").get_object(
            Bucket="ckpt", Key=f"job/u1/{NOTICE_FILE}")["Body"].read()  # fmt: skip
    edge._s3_client.cache_clear()
    assert parse_notice(body) is not None


class Refusing:
    """An S3 client whose writes fail as an outage or a refusal does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def put_object(self, **_: Any) -> None:
        raise self.error


@pytest.mark.parametrize("error", [
    ConnectTimeoutError(endpoint_url="https://s3.example"),
    PermissionError("AccessDenied: not authorized to perform s3:PutObject"),
])  # fmt: skip
def test_a_failed_write_is_returned_not_raised(error):
    why = edge.deliver_notice(NoticeDelivery("x", "s3://ckpt/job/u1", DOC), local_paths=False,
                              s3_client=Refusing(error))  # fmt: skip
    assert why is not None and type(error).__name__ in why


def test_the_default_client_is_bounded(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    edge._s3_client.cache_clear()
    config = edge._s3_client().meta.config
    assert (config.connect_timeout, config.read_timeout) == (5.0, 5.0)
    assert config.retries["total_max_attempts"] == 2


def test_delivery_needs_no_training_runtime(tmp_path):
    """The operator image has no training runtime (numpy, Ray): delivering must not import it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mlplane.operator.platforms.notice import deliver_notice\n"
        "from mlplane.operator.reconcile.notice import NoticeDelivery\n"
        f"assert deliver_notice(NoticeDelivery('x', {str(tmp_path)!r}, {DOC!r}),"
        " local_paths=True) is None\n"
        "assert not [m for m in sys.modules if m.startswith(('mlplane.training', 'numpy'))]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / NOTICE_FILE).exists()
