"""Signed request ids: attribution survives any replica; forged or foreign ids are refused."""

from __future__ import annotations

import base64
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplane.serving.request_id import (
    KEY_ENV,
    InvalidRequestId,
    RequestIdSigner,
    generate_key,
    key_from_env,
)

KEY = b"k" * 32


def signer(key: bytes = KEY, deployment: str = "ml-team/churn") -> RequestIdSigner:
    return RequestIdSigner(key, deployment)


@settings(max_examples=100, derandomize=True)
@given(
    variant=st.text(min_size=1, max_size=30),
    version=st.integers(1, 10**6),
    abtest=st.none() | st.text(min_size=1, max_size=30),
    now=st.floats(1e9, 3e9),
)
def test_round_trip_on_any_replica_with_the_key(variant, version, abtest, now):
    request_id = signer().issue(variant, version, abtest, now)
    info = signer().verify(request_id)  # another instance: another replica, after a restart
    assert (info.variant, info.version, info.abtest) == (variant, version, abtest)
    assert info.deployment == "ml-team/churn"
    assert info.issued_at == pytest.approx(now, abs=1e-3)


def test_ids_are_unique_and_header_safe():
    s = signer()
    ids = {s.issue("control", 3, "ab1", 1.8e9) for _ in range(1000)}
    assert len(ids) == 1000
    alphabet = set(string.ascii_letters + string.digits + "-_.")
    assert all(set(i) <= alphabet for i in ids)
    assert len({signer().verify(i).nonce for i in ids}) == 1000


def _edit_payload(request_id: str, **changes) -> str:
    payload, _, tag = request_id.partition(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields = ["fmt", "variant", "version", "deployment", "abtest", "issued", "nonce"]
    record = dict(zip(fields, body, strict=True)) | changes
    edited = base64.urlsafe_b64encode(json.dumps(list(record.values())).encode()).rstrip(b"=")
    return f"{edited.decode()}.{tag}"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda i: _edit_payload(i, variant="candidate"),  # claim the other variant
        lambda i: _edit_payload(i, version=4),
        lambda i: i[:-2] + ("AA" if not i.endswith("AA") else "BB"),  # another tag
        lambda i: i.replace(".", ""),
        lambda i: "",
        lambda i: "x" * 5000,
        lambda i: "é.é",
    ],
    ids=["variant", "version", "tag", "no-dot", "empty", "huge", "non-ascii"],
)
def test_forged_or_edited_ids_are_refused(mangle):
    request_id = signer().issue("control", 3, "ab1", 1.8e9)
    with pytest.raises(InvalidRequestId):
        signer().verify(mangle(request_id))


def test_another_key_or_deployment_refuses():
    request_id = signer().issue("control", 3, None, 1.8e9)
    with pytest.raises(InvalidRequestId, match="signature"):
        signer(key=b"z" * 32).verify(request_id)
    other = signer(deployment="ml-team/other")
    with pytest.raises(InvalidRequestId, match="deployment"):
        other.verify(other_id := RequestIdSigner(KEY, "ml-team/churn").issue("a", 1, None, 1.0))
    assert other_id


def test_keys_from_the_environment():
    assert key_from_env({KEY_ENV: "s3cret-s3cret-s3cret"}) == b"s3cret-s3cret-s3cret"
    assert key_from_env({KEY_ENV: ""}) is None
    assert key_from_env({}) is None
    assert len(generate_key()) == 32
    assert generate_key() != generate_key()
    with pytest.raises(ValueError, match="16 bytes"):
        RequestIdSigner(b"short", "a/b")
