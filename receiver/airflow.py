"""Async client for the Airflow 3 REST API v2: the only place Fluxback talks to Airflow.

Why raw aiohttp and not the generated `apache-airflow-client` API classes: those are
synchronous (urllib3, so threads), have no way to obtain a token, split failures
between urllib3 and `ApiException`, and parse responses into closed enums, so a
server newer than the client (a new task state) would fail to deserialize. Here
HTTP is natively async and responses are read leniently as JSON. Request *bodies*
are still built with the client's pydantic models (`PatchTaskInstanceBody`,
`TriggerDAGRunPostBody`, `CreateAssetEventsBody`), so a body the server would
refuse with 422 fails here, before it is sent. The client package is imported when
the first body is built: it loads every generated API and model (about 45 MB), which a
service that never acts on Airflow should not carry.

Errors are classified for the worker, which owns retries and backoff:
`TemporaryAirflowError` (unreachable, timeout, 429, 5xx) is a `TemporaryError` worth
retrying, `PermanentAirflowError` (other 4xx, bad credentials) a `PermanentError`. The client itself
retries only once, after minting a fresh token when the server refused the old one.
Credentials and tokens never appear in exception messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import structlog
import yarl

from receiver.config import AirflowConfig, AirflowInstance
from receiver.errors import PermanentError, TemporaryError
from receiver.secrets import FileSecret, SecretUnavailable

log = structlog.get_logger(__name__)

RequestObserver = Callable[[str, str, str, float], None]
"""`on_request(instance, method_label, status_label, seconds)`; status_label is the HTTP code or "error"."""

NOTE_MAX_CHARS = 1000
"""Airflow refuses longer task instance and DAG run notes (422)."""
MAX_MAP_INDEXES = 1000
"""How many task instances of one mapped task are listed to mark every index."""

_REFRESH_MARGIN_SECONDS = 60.0
_PAGE_SIZE = 100
ASSET_EVENT_CLOCK_SKEW = timedelta(hours=1)
"""How far apart Fluxback's and Airflow's clocks may be when looking an asset event up."""
_DETAIL_MAX_CHARS = 300
_INVALID_JWT_DETAIL = "Invalid JWT token"
_ROLE_HINT = (
    "the Airflow user needs a role that may trigger DAG runs, change task instances and create asset"
    " events (SimpleAuthManager: op or admin, not viewer)"
)
_PATTERN_SPECIALS = frozenset("%_\\|")
"""Characters with a meaning in Airflow's `*_pattern` filters (ILIKE wildcards, escape, OR)."""


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


@dataclass(frozen=True)
class TaskInstance:
    """The fields of a task instance Fluxback decides on; `state` is Airflow's text, unparsed."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    note: str | None


@dataclass(frozen=True)
class _Response:
    status: int
    body: Any
    retry_after: float | None


class AirflowClient:
    """One Airflow instance: token handling, timeouts, error classification, the calls Fluxback makes."""

    def __init__(
        self,
        name: str,
        instance: AirflowInstance,
        session: aiohttp.ClientSession | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        self.name = name
        self._base = instance.url.rstrip("/")
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
        self._login: tuple[FileSecret, FileSecret] | None = None
        if instance.username_file is not None and instance.password_file is not None:
            self._login = (FileSecret(instance.username_file), FileSecret(instance.password_file))
        self._static = FileSecret(instance.token_file) if instance.token_file is not None else None
        self._token: str | None = None
        self._refresh_at = 0.0
        self._mint_lock = asyncio.Lock()
        self._asset_ids: dict[str, int] = {}

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- task instances ---------------------------------------------------------------------------

    async def get_task_instance(
        self, dag_id: str, run_id: str, task_id: str, map_index: int | None = None
    ) -> TaskInstance:
        """The task instance as Airflow has it now.

        Raises:
            PermanentAirflowError: 404, the reason says whether the run or the task is missing.
        """
        response = await self._get_ti(dag_id, run_id, task_id, map_index)
        if response.status == 404:
            raise await self._ti_not_found(dag_id, run_id, task_id, map_index, response)
        return _task_instance(dag_id, run_id, task_id, _json_object(response, "task instance"))

    async def task_instances(self, dag_id: str, run_id: str, task_id: str) -> list[TaskInstance]:
        """Every task instance of `task_id` in the run: one for a plain task, one per map index
        for a mapped one.

        A plain task is one GET, which Airflow answers in about half the time of a list; it
        answers 404 for a mapped task (and for a missing one), and only then is the task listed.

        Raises:
            PermanentAirflowError: the run or the task does not exist (404), as for one index.
        """
        plain = await self._get_ti(dag_id, run_id, task_id, None)
        if plain.status == 200:
            return [_task_instance(dag_id, run_id, task_id, _json_object(plain, "task instance"))]
        response = await self._api(
            "GET",
            f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances",
            "list_task_instances",
            params={"task_id": task_id, "limit": str(MAX_MAP_INDEXES)},
            accept=(200, 404),
            what=_ti_text(dag_id, run_id, task_id, None),
        )
        listed = (
            _json_object(response, "task instances").get("task_instances") if response.status == 200 else []
        )
        if not listed:
            raise await self._ti_not_found(dag_id, run_id, task_id, None, response)
        return [
            _task_instance(dag_id, run_id, task_id, item)
            for item in listed
            if isinstance(item, Mapping) and item.get("task_id") == task_id
        ]

    async def set_task_instance_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int | None,
        new_state: Literal["success", "failed"],
        note: str,
    ) -> bool:
        """Mark one task instance (all indexes of a mapped task when `map_index` is None).

        Downstream tasks are never touched (`include_downstream` would mark them without running
        them); the scheduler runs them as usual. Returns False when the task instance already
        was in `new_state` (Airflow's 409), so a replay is harmless. Airflow does change a task
        instance from another terminal state, so the caller checks the state first.
        """
        from airflow_client.client import PatchTaskInstanceBody, TaskInstanceState  # late: see the docstring

        body = PatchTaskInstanceBody(
            new_state=TaskInstanceState(new_state),
            note=_truncate(note),
            include_downstream=False,
            include_upstream=False,
            include_future=False,
            include_past=False,
        )
        what = f"set {new_state} on {_ti_text(dag_id, run_id, task_id, map_index)}"
        response = await self._api(
            "PATCH",
            _ti_path(dag_id, run_id, task_id, map_index),
            "patch_task_instance",
            json_body=body.to_dict(),
            accept=(200, 404, 409),
            what=what,
        )
        if response.status == 404:
            raise await self._ti_not_found(dag_id, run_id, task_id, map_index, response)
        if response.status == 409:
            detail = _detail(response.body)
            if "already in" in detail:
                return False
            raise PermanentAirflowError(f"Airflow 409: {what}: {detail}", 409)
        return True

    async def _get_ti(self, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> _Response:
        return await self._api(
            "GET",
            _ti_path(dag_id, run_id, task_id, map_index),
            "get_task_instance",
            accept=(200, 404),
            what=_ti_text(dag_id, run_id, task_id, map_index),
        )

    async def _ti_not_found(
        self, dag_id: str, run_id: str, task_id: str, map_index: int | None, response: _Response
    ) -> PermanentAirflowError:
        """Tell "no such run" from "no such task" (the task instance 404 says neither reliably)."""
        detail = _detail(response.body)
        run = await self._api(
            "GET",
            f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}",
            "get_dag_run",
            accept=(200, 404),
            what=f"dag run: dag {dag_id} run {run_id}",
        )
        if run.status == 404:
            return PermanentAirflowError(
                f"Airflow 404: dag run not found: dag {dag_id} run {run_id} ({_detail(run.body)})", 404
            )
        what = _ti_text(dag_id, run_id, task_id, map_index)
        return PermanentAirflowError(f"Airflow 404: task instance not found: {what} ({detail})", 404)

    # -- DAG runs ---------------------------------------------------------------------------------

    async def trigger_dag_run(
        self, dag_id: str, dag_run_id: str, conf: Mapping[str, Any], note: str | None = None
    ) -> bool:
        """Create a DAG run with a chosen id; False when that run id already exists (409).

        A deterministic `dag_run_id` is the idempotency key: replaying the action is a 409.
        """
        from airflow_client.client import TriggerDAGRunPostBody  # late: see the docstring

        body = TriggerDAGRunPostBody(
            dag_run_id=dag_run_id,
            conf=dict(conf),
            note=_truncate(note) if note is not None else None,
            logical_date=None,
        )
        response = await self._api(
            "POST",
            f"/dags/{_seg(dag_id)}/dagRuns",
            "trigger_dag_run",
            json_body=body.to_dict(),
            accept=(200, 409),
            what=f"trigger dag {dag_id} run {dag_run_id}",
        )
        return response.status == 200

    # -- assets -----------------------------------------------------------------------------------

    async def asset_id(self, uri: str) -> int:
        """The id of the active asset with exactly this URI (ids are stable, so they are cached).

        The server filter is a case-insensitive substring match where `%`, `_` (and on some
        databases `\\`) are wildcards and `|` means OR, so the search term is the longest piece
        of the URI without those characters and the exact URI is picked on this side.

        Raises:
            PermanentAirflowError: no such asset; Airflow creates assets only from parsed DAGs.
        """
        if uri in self._asset_ids:
            return self._asset_ids[uri]
        params = {"order_by": "id"}
        term = _literal_term(uri)
        if term:
            params["uri_pattern"] = term
        async for asset in self._listed("/assets", "get_assets", "assets", params, f"find asset {uri}"):
            if asset.get("uri") == uri and isinstance(asset.get("id"), int):
                self._asset_ids[uri] = asset["id"]
                return self._asset_ids[uri]
        raise PermanentAirflowError(
            f"Airflow has no active asset with URI {uri}: no DAG references that asset URI"
            " (assets exist only while a parsed DAG schedules on or produces them)"
        )

    async def create_asset_event(self, asset_id: int, extra: Mapping[str, Any]) -> int:
        """Post an asset event and return its id.

        Not idempotent: after an error or a crash, `find_asset_event` tells whether it was created.
        """
        from airflow_client.client import CreateAssetEventsBody  # late: see the docstring

        body = CreateAssetEventsBody(asset_id=asset_id, extra=dict(extra))
        response = await self._api(
            "POST",
            "/assets/events",
            "create_asset_event",
            json_body=body.to_dict(),
            what=f"create asset event for asset {asset_id}",
        )
        event_id = _json_object(response, "asset event").get("id")
        if not isinstance(event_id, int):
            raise PermanentAirflowError("Airflow answered an asset event without an id", response.status)
        return event_id

    async def find_asset_event(
        self, asset_id: int, extra_key: str, extra_value: str, since: datetime
    ) -> int | None:
        """The id of an event of the asset since `since` with `extra[extra_key] == extra_value`.

        Every page is read, oldest first (so events added meanwhile cannot shift one out of
        view), and `since` is widened by `ASSET_EVENT_CLOCK_SKEW` because Airflow stamps
        events with its own clock.
        """
        after = (since - ASSET_EVENT_CLOCK_SKEW).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        params = {"asset_id": str(asset_id), "order_by": "timestamp", "timestamp_gte": after}
        what = f"list events of asset {asset_id}"
        async for event in self._listed("/assets/events", "get_asset_events", "asset_events", params, what):
            extra, event_id = event.get("extra"), event.get("id")
            found = isinstance(extra, Mapping) and extra.get(extra_key) == extra_value
            if found and isinstance(event_id, int):
                return event_id
        return None

    # -- health -----------------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when Airflow answers and reports every component healthy (needs no token)."""
        try:
            response = await self._send("GET", f"{self._base}/api/v2/monitor/health", "health", token=None)
        except TemporaryAirflowError:
            return False
        if response.status != 200 or not isinstance(response.body, Mapping):
            return False
        return all(
            isinstance(component, Mapping) and component.get("status") == "healthy"
            for component in response.body.values()
        )

    # -- plumbing ---------------------------------------------------------------------------------

    async def _listed(
        self, path: str, label: str, field: str, params: Mapping[str, str], what: str
    ) -> AsyncIterator[Mapping[str, Any]]:
        """The objects of a paged list endpoint, page by page, until `total_entries` are read."""
        offset = 0
        while True:
            query = {**params, "limit": str(_PAGE_SIZE), "offset": str(offset)}
            response = await self._api("GET", path, label, params=query, what=what)
            page = _json_object(response, field)
            items = page.get(field)
            if not isinstance(items, list):
                raise PermanentAirflowError(f"Airflow {response.status}: the answer has no {field} list")
            for item in items:
                if isinstance(item, Mapping):
                    yield item
            offset += len(items)
            total = page.get("total_entries")
            if not items or not isinstance(total, int) or offset >= total:
                return

    async def _api(
        self,
        method: str,
        path: str,
        label: str,
        *,
        what: str,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        accept: Sequence[int] = (200,),
    ) -> _Response:
        """One `/api/v2` call; statuses outside `accept` become the matching AirflowError."""
        url = f"{self._base}/api/v2{path}"
        token = await self._bearer()
        response = await self._send(method, url, label, token=token, json_body=json_body, params=params)
        if self._login is not None and _token_refused(response):
            token = await self._renew(token)
            response = await self._send(method, url, label, token=token, json_body=json_body, params=params)
        if response.status in accept:
            return response
        raise self._error(response, what)

    def _error(self, response: _Response, what: str) -> AirflowError:
        status = response.status
        detail = _detail(response.body)
        if status == 429 or status >= 500:
            return TemporaryAirflowError(
                f"Airflow {status}: {what}: {detail}", status, retry_after=response.retry_after
            )
        if self._static is not None and (status == 401 or (status == 403 and detail == _INVALID_JWT_DETAIL)):
            return PermanentAirflowError(
                f"Airflow {status}: the static token in {self._static.path} was refused ({detail});"
                " put a valid token in that file",
                status,
            )
        if status == 401 or (status == 403 and detail == _INVALID_JWT_DETAIL):
            return PermanentAirflowError(
                f"Airflow {status}: a freshly minted token was refused ({detail}); check that every"
                " Airflow api-server shares one [api_auth] jwt_secret and that the clocks agree",
                status,
            )
        if status == 403:
            return PermanentAirflowError(f"Airflow 403: {what}: {detail}; {_ROLE_HINT}", status)
        return PermanentAirflowError(f"Airflow {status}: {what}: {detail}", status)

    async def _bearer(self) -> str:
        """The token to send: the static one, or a minted one that is not about to expire."""
        if self._static is not None:
            try:
                return self._static.read_text()
            except SecretUnavailable as error:
                raise PermanentAirflowError(f"Airflow instance {self.name}: {error}") from None
        if self._token is None or time.time() >= self._refresh_at:
            async with self._mint_lock:
                if self._token is None or time.time() >= self._refresh_at:
                    return await self._mint()
        return self._token

    async def _renew(self, refused: str) -> str:
        """Mint a new token unless a concurrent call already replaced the refused one."""
        async with self._mint_lock:
            if self._token is not None and self._token != refused:
                return self._token
            return await self._mint()

    async def _mint(self) -> str:
        """`POST /auth/token` with the username and password files; remembers when to mint again."""
        if self._login is None:
            raise PermanentAirflowError(
                f"Airflow instance {self.name}: no credentials"
                " (set username_file + password_file, or token_file)"
            )
        username, password = self._login
        try:
            credentials = {"username": username.read_text(), "password": password.read_text()}
        except SecretUnavailable as error:
            raise PermanentAirflowError(f"Airflow instance {self.name}: {error}") from None
        response = await self._send(
            "POST", f"{self._base}/auth/token", "token", token=None, json_body=credentials
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
                f" ({_detail(response.body)})",
                401,
            )
        raise self._error(response, "log in at /auth/token")

    async def _send(
        self,
        method: str,
        url: str,
        label: str,
        *,
        token: str | None,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> _Response:
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
                response = _Response(
                    http.status, _parse_body(raw), _retry_after(http.headers.get("Retry-After"))
                )
        except TimeoutError:
            self._observe(label, "error", started)
            raise TemporaryAirflowError(
                f"Airflow at {self._base} did not answer within {self._timeout.total} s"
            ) from None
        except aiohttp.ClientError as error:
            self._observe(label, "error", started)
            raise TemporaryAirflowError(
                f"Airflow at {self._base} unreachable: {type(error).__name__}: {error}"
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


class AirflowClients:
    """One client per configured Airflow instance, looked up by the name a trailer or rule gives."""

    def __init__(self, clients: Mapping[str, AirflowClient]) -> None:
        self._clients = dict(clients)

    @classmethod
    def from_config(
        cls,
        config: AirflowConfig,
        session: aiohttp.ClientSession | None = None,
        on_request: RequestObserver | None = None,
    ) -> AirflowClients:
        """A client per `airflow.instances` entry, sharing `session` and `on_request` when given."""
        return cls(
            {
                name: AirflowClient(name, instance, session=session, on_request=on_request)
                for name, instance in config.instances.items()
            }
        )

    def get(self, name: str) -> AirflowClient:
        """The client for instance `name`.

        Raises:
            PermanentAirflowError: no instance has that name (a trailer or rule names an unknown one).
        """
        try:
            return self._clients[name]
        except KeyError:
            known = ", ".join(sorted(self._clients)) or "none"
            raise PermanentAirflowError(
                f"no Airflow instance named {name!r} in airflow.instances (configured: {known})"
            ) from None

    async def close(self) -> None:
        """Close every client's own HTTP session (a shared one stays open for its owner)."""
        for client in self._clients.values():
            await client.close()


def _seg(value: str) -> str:
    """One URL path segment: run ids hold `:` and `+`, which must reach Airflow unchanged."""
    return quote(value, safe="")


def _ti_path(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    path = f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances/{_seg(task_id)}"
    return path if map_index is None else f"{path}/{map_index}"


def _ti_text(dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
    text = f"dag {dag_id} run {run_id} task {task_id}"
    return text if map_index is None else f"{text} map index {map_index}"


def _truncate(note: str) -> str:
    return note if len(note) <= NOTE_MAX_CHARS else note[: NOTE_MAX_CHARS - 1] + "…"


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _literal_term(uri: str) -> str:
    """The longest run of `uri` free of pattern metacharacters: a literal substring on every database."""
    best, current = "", ""
    for char in uri:
        current = "" if char in _PATTERN_SPECIALS else current + char
        if len(current) > len(best):
            best = current
    return "" if best.strip() == "~" else best.strip()


def _token_refused(response: _Response) -> bool:
    """Expired (401) or signed with a key the server no longer has (403 "Invalid JWT token")."""
    return response.status == 401 or (
        response.status == 403 and _detail(response.body) == _INVALID_JWT_DETAIL
    )


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


def _detail(body: Any) -> str:
    """Airflow's `detail`, which is a string, a list (often validation errors) or an object, in one line.

    Validation errors are reduced to location and message: their `input` may echo the request,
    which for a login is the password.
    """
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    text = _detail_text(detail)
    text = " ".join(text.split())
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


def _task_instance(dag_id: str, run_id: str, task_id: str, body: Mapping[str, Any]) -> TaskInstance:
    found_index = body.get("map_index")
    return TaskInstance(
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        map_index=found_index if isinstance(found_index, int) else -1,
        state=_text_or_none(body.get("state")),
        note=_text_or_none(body.get("note")),
    )


def _json_object(response: _Response, what: str) -> Mapping[str, Any]:
    if not isinstance(response.body, Mapping):
        raise PermanentAirflowError(
            f"Airflow {response.status}: expected a JSON object for {what}, got {_detail(response.body)}",
            response.status,
        )
    return response.body
