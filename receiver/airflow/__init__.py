"""Async client for the Airflow 3 REST API v2: the only place Fluxback talks to Airflow.

Why raw aiohttp and not the generated `apache-airflow-client` API classes: those are
synchronous (urllib3, so threads), have no way to obtain a token, split failures
between urllib3 and `ApiException`, and parse responses into closed enums, so a
server newer than the client (a new task state) would fail to deserialize. Here
HTTP is natively async and responses are read leniently as JSON; only request bodies
use the client's models, imported on first use (`client`).

- `errors`: what a failed call raises, temporary or permanent, for the worker's retries.
- `transport`: one HTTP exchange (session, timeout, TLS, metrics).
- `auth`: the bearer token (static or minted and renewed) and what a refusal means.
- `client`: the calls Fluxback makes; `registry`: one client per configured instance.
"""

from receiver.airflow.client import (
    ASSET_EVENT_CLOCK_SKEW,
    MAX_MAP_INDEXES,
    NOTE_MAX_CHARS,
    AirflowClient,
    TaskInstance,
)
from receiver.airflow.errors import AirflowError, PermanentAirflowError, TemporaryAirflowError
from receiver.airflow.registry import AirflowClients
from receiver.airflow.transport import RequestObserver

__all__ = [
    "ASSET_EVENT_CLOCK_SKEW",
    "MAX_MAP_INDEXES",
    "NOTE_MAX_CHARS",
    "AirflowClient",
    "AirflowClients",
    "AirflowError",
    "PermanentAirflowError",
    "RequestObserver",
    "TaskInstance",
    "TemporaryAirflowError",
]
