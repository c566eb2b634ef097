"""The bearer token for one Airflow instance, and what a refusal means given where the token came from.

Either a static token read from `token_file` on every call, or one minted at `POST /auth/token`
from the username and password files and minted again shortly before its `exp`, or when the
server refuses it. Neither the credentials nor a token ever reach a message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping

from receiver.airflow.errors import AirflowError, PermanentAirflowError, TemporaryAirflowError, detail
from receiver.airflow.transport import Response, Transport
from receiver.config import AirflowInstance
from receiver.secrets import FileSecret, SecretUnavailable

_REFRESH_MARGIN_SECONDS = 60.0
_INVALID_JWT_DETAIL = "Invalid JWT token"
_ROLE_HINT = (
    "the Airflow user needs a role that may trigger DAG runs, change task instances and create asset"
    " events (SimpleAuthManager: op or admin, not viewer)"
)


class Tokens:
    """The token to send to one instance, minted (once for concurrent callers) when needed."""

    def __init__(self, name: str, instance: AirflowInstance, transport: Transport) -> None:
        self._name = name
        self._transport = transport
        self._login: tuple[FileSecret, FileSecret] | None = None
        if instance.username_file is not None and instance.password_file is not None:
            self._login = (FileSecret(instance.username_file), FileSecret(instance.password_file))
        self._static = FileSecret(instance.token_file) if instance.token_file is not None else None
        self._token: str | None = None
        self._refresh_at = 0.0
        self._mint_lock = asyncio.Lock()

    def renewable(self, response: Response) -> bool:
        """Whether minting a new token may help: the token was refused and it was a minted one."""
        return self._login is not None and _token_refused(response.status, detail(response.body))

    async def bearer(self) -> str:
        """The token to send: the static one, or a minted one that is not about to expire."""
        if self._static is not None:
            try:
                return self._static.read_text()
            except SecretUnavailable as error:
                raise PermanentAirflowError(f"Airflow instance {self._name}: {error}") from None
        if self._token is None or time.time() >= self._refresh_at:
            async with self._mint_lock:
                if self._token is None or time.time() >= self._refresh_at:
                    return await self._mint()
        return self._token

    async def renew(self, refused: str) -> str:
        """Mint a new token unless a concurrent call already replaced the refused one."""
        async with self._mint_lock:
            if self._token is not None and self._token != refused:
                return self._token
            return await self._mint()

    def error(self, response: Response, what: str) -> AirflowError:
        """The error for an answer outside what the call accepts; a refused token names its source."""
        status = response.status
        reason = detail(response.body)
        if status == 429 or status >= 500:
            return TemporaryAirflowError(
                f"Airflow {status}: {what}: {reason}", status, retry_after=response.retry_after
            )
        if self._static is not None and _token_refused(status, reason):
            return PermanentAirflowError(
                f"Airflow {status}: the static token in {self._static.path} was refused ({reason});"
                " put a valid token in that file",
                status,
            )
        if _token_refused(status, reason):
            return PermanentAirflowError(
                f"Airflow {status}: a freshly minted token was refused ({reason}); check that every"
                " Airflow api-server shares one [api_auth] jwt_secret and that the clocks agree",
                status,
            )
        if status == 403:
            return PermanentAirflowError(f"Airflow 403: {what}: {reason}; {_ROLE_HINT}", status)
        return PermanentAirflowError(f"Airflow {status}: {what}: {reason}", status)

    async def _mint(self) -> str:
        """`POST /auth/token` with the username and password files; remembers when to mint again."""
        if self._login is None:
            raise PermanentAirflowError(
                f"Airflow instance {self._name}: no credentials"
                " (set username_file + password_file, or token_file)"
            )
        username, password = self._login
        try:
            credentials = {"username": username.read_text(), "password": password.read_text()}
        except SecretUnavailable as error:
            raise PermanentAirflowError(f"Airflow instance {self._name}: {error}") from None
        response = await self._transport.send(
            "POST", f"{self._transport.base}/auth/token", "token", token=None, json_body=credentials
        )
        if response.status in (200, 201):
            token = response.body.get("access_token") if isinstance(response.body, Mapping) else None
            if not isinstance(token, str) or not token:
                raise PermanentAirflowError("Airflow /auth/token answered without an access_token")
            expiry = _jwt_expiry(token)
            lifetime = 0.0 if expiry is None else expiry - time.time()
            self._token = token
            # Without a usable `exp` (none, or our clock is already past it) only a 401 triggers renewal.
            self._refresh_at = (
                expiry - min(_REFRESH_MARGIN_SECONDS, lifetime / 2)
                if expiry is not None and lifetime > 0
                else float("inf")
            )
            return token
        if response.status == 401:
            raise PermanentAirflowError(
                f"Airflow 401: login refused for the credentials in {username.path} and {password.path}"
                f" ({detail(response.body)})",
                401,
            )
        raise self.error(response, "log in at /auth/token")


def _token_refused(status: int, reason: str) -> bool:
    """Expired (401) or signed with a key the server no longer has (403 "Invalid JWT token")."""
    return status == 401 or (status == 403 and reason == _INVALID_JWT_DETAIL)


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim, read without verification: only to know when to mint again."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        expiry = claims["exp"]
    except (IndexError, ValueError, KeyError, TypeError):
        return None
    if isinstance(expiry, bool) or not isinstance(expiry, int | float):
        return None
    return float(expiry)
