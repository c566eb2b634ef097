"""One HTTP exchange with one Airflow instance: session, timeout, TLS, metrics; answers read leniently.

Responses are read as JSON when they are JSON and as text otherwise, never into closed enums,
so a server newer than the client (a new task state) is still understood. Transport failures
(unreachable, timeout) are temporary; what a status means is decided by the caller.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import structlog
import yarl

from receiver.airflow.errors import PermanentAirflowError, TemporaryAirflowError, detail
from receiver.config import AirflowInstance

log = structlog.get_logger(__name__)

RequestObserver = Callable[[str, str, str, float], None]
"""`on_request(instance, method_label, status_label, seconds)`; status_label is the HTTP code or "error"."""


@dataclass(frozen=True)
class Response:
    status: int
    body: Any
    retry_after: float | None


class Transport:
    """The HTTP side of one Airflow instance; `base` is its URL without a trailing slash."""

    def __init__(
        self,
        name: str,
        instance: AirflowInstance,
        session: aiohttp.ClientSession | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        self.name = name
        self.base = instance.url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=instance.timeout_seconds)
        self._session = session
        self._owns_session = session is None
        self._on_request = on_request
        self._ssl: ssl.SSLContext | bool = True
        if instance.ca_file is not None:
            try:
                self._ssl = ssl.create_default_context(cafile=str(instance.ca_file))
            except OSError as error:
                raise PermanentAirflowError(
                    f"Airflow instance {name}: cannot load ca_file {instance.ca_file}:"
                    f" {error.strerror or error}"
                ) from None

    async def close(self) -> None:
        """Close the HTTP session if this transport created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        method: str,
        url: str,
        label: str,
        *,
        token: str | None,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """One HTTP exchange with timeout and TLS settings; transport failures are temporary."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        started = time.perf_counter()
        try:
            async with self._session.request(
                method,
                yarl.URL(url, encoded=True),
                json=json_body,
                params=params,
                headers=headers,
                timeout=self._timeout,
                ssl=self._ssl,
            ) as http:
                raw = await http.read()
                response = Response(
                    http.status, _parse_body(raw), _retry_after(http.headers.get("Retry-After"))
                )
        except TimeoutError:
            self._observe(label, "error", started)
            raise TemporaryAirflowError(
                f"Airflow at {self.base} did not answer within {self._timeout.total} s"
            ) from None
        except aiohttp.ClientError as error:
            self._observe(label, "error", started)
            raise TemporaryAirflowError(
                f"Airflow at {self.base} unreachable: {type(error).__name__}: {error}"
            ) from None
        self._observe(label, str(response.status), started)
        return response

    def _observe(self, label: str, status: str, started: float) -> None:
        seconds = time.perf_counter() - started
        log.debug(
            "airflow.answered", instance=self.name, call=label, status=status, seconds=round(seconds, 4)
        )
        if self._on_request is not None:
            self._on_request(self.name, label, status, seconds)


def json_object(response: Response, what: str) -> Mapping[str, Any]:
    """The body as a JSON object, or a permanent error saying what came instead."""
    if not isinstance(response.body, Mapping):
        raise PermanentAirflowError(
            f"Airflow {response.status}: expected a JSON object for {what}, got {detail(response.body)}",
            response.status,
        )
    return response.body


def _parse_body(raw: bytes) -> Any:
    """JSON when it is JSON, else the text (a proxy's HTML error page, say)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds from now; it is either a number of seconds or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
