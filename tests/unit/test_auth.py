"""HMAC and bearer verification against notification-controller's own test vector (its
`internal/notifier/forwarder_test.go`), key rotation, admin tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from receiver.auth import (
    AdminAuth,
    AuthMethod,
    CredentialsUnavailable,
    Forbidden,
    HmacKeys,
    Unauthorized,
    WebhookAuth,
)
from receiver.secrets import FileSecret
from tests.flux_replay import flux_headers, payload, sign

UPSTREAM_KEY = b"7152fed34dd6149a7c75a276c510da27cb6f82b0"
UPSTREAM_SIGNATURE = "sha256=65b018549b1254e7226d1c08f9567ee45bc9de0fc4e7b1a40253f9a018b08be7"
EXAMPLE_A_SIGNATURE = "sha256=64e087bc892dc0d4ce8c5922804b7ba655ce7714048eb7b4cd875a9f4fba6eb2"
EXAMPLE_A_NEWLINE_SIGNATURE = "sha256=535c561b2244e31b52dfeefc1bdb340af2c11be15a1281c809405766fc739ce2"


def _secret(tmp_path: Path, name: str, value: bytes) -> FileSecret:
    path = tmp_path / name
    path.write_bytes(value)
    return FileSecret(path)


def _replace(secret: FileSecret, value: bytes) -> None:
    """Swap the file like Kubernetes does for a mounted Secret: a new file renamed over the old one."""
    fresh = secret.path.with_suffix(".new")
    fresh.write_bytes(value)
    os.replace(fresh, secret.path)


def test_upstream_vector_verifies_byte_exactly(tmp_path: Path) -> None:
    body = payload("upstream_forwarder_test")
    assert sign(body, UPSTREAM_KEY) == UPSTREAM_SIGNATURE
    keys = HmacKeys([_secret(tmp_path, "key", UPSTREAM_KEY)])
    assert keys.verify(UPSTREAM_SIGNATURE, body)
    assert not keys.verify(UPSTREAM_SIGNATURE, body + b" ")


@pytest.mark.parametrize("file_content", [b"s3cr3t-hmac-token", b"s3cr3t-hmac-token\n"])
@pytest.mark.parametrize("signature", [EXAMPLE_A_SIGNATURE, EXAMPLE_A_NEWLINE_SIGNATURE])
def test_example_a_vectors_with_and_without_trailing_newline(
    tmp_path: Path, file_content: bytes, signature: str
) -> None:
    """Flux >= 2.7 signs with the Secret's exact bytes, <= 2.6 with them stripped."""
    body = payload("a_kustomization_reconciliation_succeeded")
    assert len(body) == 578
    assert HmacKeys([_secret(tmp_path, "key", file_content)]).verify(signature, body)


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512", "SHA512"])
def test_accepted_algorithms(tmp_path: Path, algorithm: str) -> None:
    body = b'{"x": 1}'
    digest = sign(body, b"k", algorithm.lower()).partition("=")[2]
    assert HmacKeys([_secret(tmp_path, "key", b"k")]).verify(f"{algorithm}={digest}", body)


def test_hex_case_does_not_matter(tmp_path: Path) -> None:
    body = b"{}"
    algorithm, _, digest = sign(body, b"k").partition("=")
    assert HmacKeys([_secret(tmp_path, "key", b"k")]).verify(f"{algorithm}={digest.upper()}", body)


@pytest.mark.parametrize(
    "signature", ["sha1=" + "ab" * 20, "md5=abcd", "sha256", "sha256=", "sha256=zz", "=abcd", "abc"]
)
def test_malformed_signatures_are_refused(tmp_path: Path, signature: str) -> None:
    with pytest.raises(Unauthorized, match="X-Signature must be"):
        HmacKeys([_secret(tmp_path, "key", b"k")]).verify(signature, b"{}")


def test_several_keys_at_once(tmp_path: Path) -> None:
    body = payload("b_kustomization_progressing")
    keys = HmacKeys([_secret(tmp_path, "old", b"old-key\n"), _secret(tmp_path, "new", b"new-key\n")])
    assert keys.verify(sign(body, b"old-key"), body)
    assert keys.verify(sign(body, b"new-key"), body)
    assert not keys.verify(sign(body, b"other-key"), body)


def test_rotation_rereads_a_replaced_file(tmp_path: Path) -> None:
    body = payload("b_kustomization_progressing")
    secret = _secret(tmp_path, "key", b"first-key")
    keys = HmacKeys([secret])
    assert keys.verify(sign(body, b"first-key"), body)
    _replace(secret, b"second-key")
    assert keys.verify(sign(body, b"second-key"), body)
    assert not keys.verify(sign(body, b"first-key"), body)


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n"])
def test_an_empty_key_never_authenticates(tmp_path: Path, content: bytes) -> None:
    """A blank key file is no key: alone it makes the keys unavailable (503, retried), next
    to a real key it is ignored; a signature made with an empty key never passes."""
    body = b"{}"
    blank = _secret(tmp_path, "key", content)
    for key in (b"", b"\n", content):
        with pytest.raises(CredentialsUnavailable):
            HmacKeys([blank]).verify(sign(body, key), body)
        assert not HmacKeys([blank, _secret(tmp_path, "real", b"k")]).verify(sign(body, key), body)


def test_unreadable_key_files(tmp_path: Path) -> None:
    body = b"{}"
    missing = FileSecret(tmp_path / "missing")
    with pytest.raises(CredentialsUnavailable):
        HmacKeys([missing]).verify(sign(body, b"k"), body)
    assert HmacKeys([missing, _secret(tmp_path, "key", b"k")]).verify(sign(body, b"k"), body)


def _webhook(tmp_path: Path, *, allow: bool = False) -> WebhookAuth:
    return WebhookAuth(
        [_secret(tmp_path, "hmac", b"hmac-key\n")],
        [_secret(tmp_path, "bearer", b"bearer-token\n")],
        allow_unauthenticated=allow,
    )


def test_webhook_methods(tmp_path: Path) -> None:
    body = payload("a_kustomization_reconciliation_succeeded")
    auth = _webhook(tmp_path)
    assert auth.authenticate(flux_headers(body, hmac_key=b"hmac-key"), body) == AuthMethod.HMAC
    assert auth.authenticate(flux_headers(body, bearer="bearer-token"), body) == AuthMethod.BEARER
    assert auth.authenticate({"Authorization": "bearer  bearer-token "}, body) == AuthMethod.BEARER


def test_webhook_refusals_never_echo_credentials(tmp_path: Path) -> None:
    body = b"{}"
    auth = _webhook(tmp_path)
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-value"},
        {"Authorization": "Basic aGVsbG8="},
        {"X-Signature": sign(body, b"wrong-key-value")},
    ):
        with pytest.raises(Unauthorized) as caught:
            auth.authenticate(headers, body)
        for secret in ("hmac-key", "bearer-token", "wrong-token-value", "wrong-key-value", "aGVsbG8="):
            assert secret not in str(caught.value)


def test_unauthenticated_only_when_allowed_and_nothing_presented(tmp_path: Path) -> None:
    body = b"{}"
    assert _webhook(tmp_path, allow=True).authenticate({}, body) == AuthMethod.UNAUTHENTICATED
    with pytest.raises(Unauthorized, match="X-Signature"):
        _webhook(tmp_path).authenticate({}, body)
    with pytest.raises(Unauthorized):
        _webhook(tmp_path, allow=True).authenticate({"X-Signature": sign(body, b"bad")}, body)


def test_credentials_for_unconfigured_methods_are_not_looked_at(tmp_path: Path) -> None:
    auth = WebhookAuth([], [], allow_unauthenticated=True)
    assert auth.authenticate({"X-Signature": "sha256=00", "Authorization": "Bearer x"}, b"{}") == (
        AuthMethod.UNAUTHENTICATED
    )


def test_admin_tokens(tmp_path: Path) -> None:
    admin = AdminAuth([_secret(tmp_path, "admin", b"admin-token\n")])
    admin.check({"Authorization": "Bearer admin-token"})
    with pytest.raises(Unauthorized):
        admin.check({})
    with pytest.raises(Forbidden):
        admin.check({"Authorization": "Bearer not-the-admin-token"})
    with pytest.raises(Forbidden, match="no admin_tokens"):
        AdminAuth([]).check({"Authorization": "Bearer anything"})


def test_admin_token_rotation(tmp_path: Path) -> None:
    secret = _secret(tmp_path, "admin", b"first")
    admin = AdminAuth([secret])
    admin.check({"Authorization": "Bearer first"})
    _replace(secret, b"second")
    admin.check({"Authorization": "Bearer second"})
    with pytest.raises(Forbidden):
        admin.check({"Authorization": "Bearer first"})


def test_a_presented_credential_that_fails_is_refused_even_next_to_a_valid_one(tmp_path: Path) -> None:
    body = payload("a_kustomization_reconciliation_succeeded")
    auth = _webhook(tmp_path)
    good_token = flux_headers(body, bearer="bearer-token")
    with pytest.raises(Unauthorized, match="signature"):
        auth.authenticate({**good_token, "X-Signature": sign(body, b"wrong-key")}, body)
    good_signature = flux_headers(body, hmac_key=b"hmac-key")
    with pytest.raises(Unauthorized, match="bearer token"):
        auth.authenticate({**good_signature, "Authorization": "Bearer wrong"}, body)
    both = {**good_signature, "Authorization": "Bearer bearer-token"}
    assert auth.authenticate(both, body) == AuthMethod.HMAC
