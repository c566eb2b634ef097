"""The calls Fluxback makes to one Airflow instance: task instances, DAG runs, assets, health.

Request *bodies* are built with `apache-airflow-client`'s pydantic models
(`PatchTaskInstanceBody`, `TriggerDAGRunPostBody`, `CreateAssetEventsBody`), so a body the server
would refuse with 422 fails here, before it is sent. The client package is imported when the
first body is built: it loads every generated API and model (about 45 MB), which a service that
never acts on Airflow should not carry. The client itself retries only once, after minting a
fresh token when the server refused the old one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from receiver.airflow.auth import Tokens
from receiver.airflow.errors import PermanentAirflowError, TemporaryAirflowError, detail
from receiver.airflow.transport import RequestObserver, Response, Transport, json_object
from receiver.config import AirflowInstance

NOTE_MAX_CHARS = 1000
"""Airflow refuses longer task instance and DAG run notes (422)."""
MAX_MAP_INDEXES = 1000
"""How many task instances of one mapped task are listed to mark every index."""

_PAGE_SIZE = 100
ASSET_EVENT_CLOCK_SKEW = timedelta(hours=1)
"""How far apart Fluxback's and Airflow's clocks may be when looking an asset event up."""
_PATTERN_SPECIALS = frozenset("%_\\|")
"""Characters with a meaning in Airflow's `*_pattern` filters (ILIKE wildcards, escape, OR)."""


@dataclass(frozen=True)
class TaskInstance:
    """The fields of a task instance Fluxback decides on; `state` is Airflow's text, unparsed."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    note: str | None


class AirflowClient:
    """One Airflow instance: the calls Fluxback makes, over a transport with its tokens."""

    def __init__(
        self,
        name: str,
        instance: AirflowInstance,
        session: aiohttp.ClientSession | None = None,
        on_request: RequestObserver | None = None,
    ) -> None:
        self.name = name
        self._http = Transport(name, instance, session, on_request)
        self._tokens = Tokens(name, instance, self._http)
        self._asset_ids: dict[str, int] = {}

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        await self._http.close()

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
        return _task_instance(dag_id, run_id, task_id, json_object(response, "task instance"))

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
            return [_task_instance(dag_id, run_id, task_id, json_object(plain, "task instance"))]
        response = await self._api(
            "GET",
            f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}/taskInstances",
            "list_task_instances",
            params={"task_id": task_id, "limit": str(MAX_MAP_INDEXES)},
            accept=(200, 404),
            what=_ti_text(dag_id, run_id, task_id, None),
        )
        listed = (
            json_object(response, "task instances").get("task_instances") if response.status == 200 else []
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
            reason = detail(response.body)
            if "already in" in reason:
                return False
            raise PermanentAirflowError(f"Airflow 409: {what}: {reason}", 409)
        return True

    async def _get_ti(self, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> Response:
        return await self._api(
            "GET",
            _ti_path(dag_id, run_id, task_id, map_index),
            "get_task_instance",
            accept=(200, 404),
            what=_ti_text(dag_id, run_id, task_id, map_index),
        )

    async def _ti_not_found(
        self, dag_id: str, run_id: str, task_id: str, map_index: int | None, response: Response
    ) -> PermanentAirflowError:
        """Tell "no such run" from "no such task" (the task instance 404 says neither reliably)."""
        reason = detail(response.body)
        run = await self._api(
            "GET",
            f"/dags/{_seg(dag_id)}/dagRuns/{_seg(run_id)}",
            "get_dag_run",
            accept=(200, 404),
            what=f"dag run: dag {dag_id} run {run_id}",
        )
        if run.status == 404:
            return PermanentAirflowError(
                f"Airflow 404: dag run not found: dag {dag_id} run {run_id} ({detail(run.body)})", 404
            )
        what = _ti_text(dag_id, run_id, task_id, map_index)
        return PermanentAirflowError(f"Airflow 404: task instance not found: {what} ({reason})", 404)

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
        event_id = json_object(response, "asset event").get("id")
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
            response = await self._http.send(
                "GET", f"{self._http.base}/api/v2/monitor/health", "health", token=None
            )
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
            page = json_object(response, field)
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
    ) -> Response:
        """One `/api/v2` call; statuses outside `accept` become the matching AirflowError."""
        url = f"{self._http.base}/api/v2{path}"
        token = await self._tokens.bearer()
        response = await self._http.send(method, url, label, token=token, json_body=json_body, params=params)
        if self._tokens.renewable(response):
            token = await self._tokens.renew(token)
            response = await self._http.send(
                method, url, label, token=token, json_body=json_body, params=params
            )
        if response.status in accept:
            return response
        raise self._tokens.error(response, what)


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
