"""What a failed Airflow call raises, and Airflow's `detail` made fit for those messages.

`TemporaryAirflowError` (unreachable, timeout, 429, 5xx) is a `TemporaryError` worth retrying,
`PermanentAirflowError` (other 4xx, bad credentials) a `PermanentError`; the worker owns retries
and backoff. Credentials and tokens never appear in these messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from receiver.errors import PermanentError, TemporaryError

_DETAIL_MAX_CHARS = 300


class AirflowError(Exception):
    """A call to Airflow failed; `reason` is meant for operators, `status` is the HTTP code if any."""

    reason: str
    status: int | None


class TemporaryAirflowError(TemporaryError, AirflowError):
    """Worth retrying later: Airflow unreachable, timed out, overloaded (429) or failing (5xx).

    `retry_after` is what the server asked for in `Retry-After`, if it said.
    """

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason, retry_after=retry_after)
        self.status = status


class PermanentAirflowError(PermanentError, AirflowError):
    """Retrying the same call cannot succeed: fix the configuration, the DAG or the trailer first."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


def detail(body: Any) -> str:
    """Airflow's `detail`, which is a string, a list (often validation errors) or an object, in one line.

    Validation errors are reduced to location and message: their `input` may echo the request,
    which for a login is the password.
    """
    found = body.get("detail", body) if isinstance(body, Mapping) else body
    text = " ".join(_detail_text(found).split())
    return text if len(text) <= _DETAIL_MAX_CHARS else text[: _DETAIL_MAX_CHARS - 1] + "…"


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        return detail or "(empty body)"
    if isinstance(detail, list):
        return "; ".join(_detail_text(item) for item in detail) or "(empty detail)"
    if isinstance(detail, Mapping):
        if "msg" in detail:
            location = ".".join(str(part) for part in detail.get("loc", ()))
            return f"{location}: {detail['msg']}" if location else str(detail["msg"])
        if "reason" in detail:
            message = detail.get("message")
            return f"{detail['reason']}: {message}" if message else str(detail["reason"])
        return json.dumps(detail, sort_keys=True, default=str)
    return json.dumps(detail, default=str)
