"""Who may post events, and who may replay: HMAC signatures and bearer tokens.

Flux's `generic-hmac` provider signs the exact body with the Secret's `token`
(`X-Signature: sha256=<hex>`); the plain `generic` provider can only send a
static header, so a bearer token goes through the Secret's `headers`. Keys are
files (FileSecret) and several can be configured at once, which is how a key is
rotated without dropping events. Every comparison is constant-time, and nothing
here ever puts a key, a token or a presented credential in a message.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum

from receiver.secrets import FileSecret, SecretUnavailable

_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


class AuthMethod(StrEnum):
    """How a request was authenticated; stored with the delivery, never a secret."""

    HMAC = "hmac"
    BEARER = "bearer"
    UNAUTHENTICATED = "unauthenticated"


class Unauthorized(Exception):
    """Missing or wrong credentials (401); the message is safe to send back."""


class Forbidden(Exception):
    """A well-formed credential that does not grant this action (403)."""


class CredentialsUnavailable(Exception):
    """No configured key file can be read, so nothing can be verified (503: Flux retries)."""


def _file_values(secrets: Sequence[FileSecret]) -> tuple[list[bytes], int]:
    """The usable files' bytes and how many files are missing, unreadable or blank.

    A blank file is no key at all (anyone can compute an HMAC with an empty key), so it
    counts as unavailable: with nothing else configured the answer is a 503 that Flux
    retries and /readyz reports, not a 401 for every event.
    """
    values: list[bytes] = []
    unusable = 0
    for secret in secrets:
        try:
            value = secret.read()
        except SecretUnavailable:
            unusable += 1
            continue
        if value.strip():
            values.append(value)
        else:
            unusable += 1
    return values, unusable


def usable_count(secrets: Sequence[FileSecret]) -> int:
    """How many of `secrets` hold a usable (readable, not blank) value right now."""
    return len(_file_values(secrets)[0])


def hmac_key_variants(raw: bytes) -> Iterator[bytes]:
    """The keys a file may mean: its exact bytes and the whitespace-stripped text, with and
    without one trailing newline.

    Flux >= 2.7 signs with the Secret's exact bytes, Flux <= 2.6 stripped them
    (notification-controller v1.4-v1.6 applied `strings.TrimSpace` to the `token` key;
    from v1.7 fluxcd/pkg `runtime/secrets` passes it unchanged); a Secret made with
    `echo` has a newline that our own copy of the key may lack, or the other way round.
    An empty key is never used: anyone can compute it.
    """
    stripped = raw.strip()
    if not stripped:
        return
    seen = set()
    for key in (raw, stripped, stripped + b"\n"):
        if key not in seen:
            seen.add(key)
            yield key


def bearer_token(headers: Mapping[str, str]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None if there is no such header."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode("utf-8", "replace")


class TokenSet:
    """Bearer tokens from files; a token is the file's text without surrounding whitespace."""

    def __init__(self, secrets: Sequence[FileSecret]) -> None:
        self.secrets = tuple(secrets)

    def matches(self, presented: bytes) -> bool:
        """Whether `presented` equals one of the tokens.

        Raises:
            CredentialsUnavailable: tokens are configured but no file can be read.
        """
        values, unusable = _file_values(self.secrets)
        if unusable and not values:
            raise CredentialsUnavailable("no token file can be read")
        found = False
        for value in values:
            # Every token is compared, so the time taken does not tell which one matched.
            found |= hmac.compare_digest(value.strip(), presented)
        return found


class HmacKeys:
    """generic-hmac keys from files; verifies `X-Signature: <algorithm>=<hex>` over the raw body."""

    def __init__(self, secrets: Sequence[FileSecret]) -> None:
        self.secrets = tuple(secrets)

    def verify(self, signature: str, body: bytes) -> bool:
        """Whether `signature` is the HMAC of `body` under one of the keys.

        Raises:
            Unauthorized: the header is not `sha256=<hex>`, `sha384=<hex>` or `sha512=<hex>`.
            CredentialsUnavailable: keys are configured but no file can be read.
        """
        algorithm, _, hex_digest = signature.strip().partition("=")
        digest_type = _ALGORITHMS.get(algorithm.lower())
        try:
            presented = bytes.fromhex(hex_digest)
        except ValueError:
            presented = b""
        if digest_type is None or not presented:
            raise Unauthorized("X-Signature must be sha256=<hex>, sha384=<hex> or sha512=<hex>")
        values, unusable = _file_values(self.secrets)
        if unusable and not values:
            raise CredentialsUnavailable("no HMAC key file can be read")
        found = False
        for value in values:
            for key in hmac_key_variants(value):
                found |= hmac.compare_digest(hmac.digest(key, body, digest_type), presented)
        return found


class WebhookAuth:
    """Decides whether an event request is authentic, from its headers and exact body."""

    def __init__(
        self,
        hmac_keys: Sequence[FileSecret],
        bearer_tokens: Sequence[FileSecret],
        *,
        allow_unauthenticated: bool = False,
    ) -> None:
        self.hmac = HmacKeys(hmac_keys)
        self.bearer = TokenSet(bearer_tokens)
        self.allow_unauthenticated = allow_unauthenticated

    def authenticate(self, headers: Mapping[str, str], body: bytes) -> AuthMethod:
        """The method that authenticated the request.

        Only credentials for a configured method are looked at, and every one presented
        must be valid: a wrong signature next to a valid token (or the other way round) is
        refused, as is a wrong credential when unauthenticated requests are allowed. Either
        means a misconfigured sender, which should hear about it.

        Raises:
            Unauthorized: missing or wrong signature or token.
            CredentialsUnavailable: the configured key files cannot be read.
        """
        signature = headers.get("X-Signature")
        token = bearer_token(headers)
        valid: list[AuthMethod] = []
        if self.hmac.secrets and signature is not None:
            if not self.hmac.verify(signature, body):
                raise Unauthorized("the signature does not match any configured key")
            valid.append(AuthMethod.HMAC)
        if self.bearer.secrets and token is not None:
            if not self.bearer.matches(token):
                raise Unauthorized("the bearer token does not match any configured token")
            valid.append(AuthMethod.BEARER)
        if valid:
            return valid[0]
        if self.allow_unauthenticated:
            return AuthMethod.UNAUTHENTICATED
        raise Unauthorized(self._missing())

    def _missing(self) -> str:
        wanted = []
        if self.hmac.secrets:
            wanted.append("an X-Signature header (generic-hmac provider)")
        if self.bearer.secrets:
            wanted.append("an Authorization: Bearer header (generic provider headers)")
        return "expected " + " or ".join(wanted) if wanted else "no webhook credentials are configured"


class AdminAuth:
    """Bearer tokens that allow write endpoints such as replay."""

    def __init__(self, tokens: Sequence[FileSecret]) -> None:
        self.tokens = TokenSet(tokens)

    def check(self, headers: Mapping[str, str]) -> None:
        """Return if the request carries an admin token.

        Raises:
            Unauthorized: no `Authorization: Bearer` header.
            Forbidden: the token is not an admin token, or no admin tokens are configured.
            CredentialsUnavailable: the configured token files cannot be read.
        """
        token = bearer_token(headers)
        if token is None:
            raise Unauthorized("expected an Authorization: Bearer header with an admin token")
        if not self.tokens.secrets:
            raise Forbidden("write endpoints are disabled: no admin_tokens are configured")
        if not self.tokens.matches(token):
            raise Forbidden("the token is not an admin token")
