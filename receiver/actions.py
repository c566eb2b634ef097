"""The three things Fluxback does in Airflow, each at most once.

Every action has an idempotency key and is recorded in the journal *before*
the call (`started`) and after it (`done`, `already`, an error). A key that is
already done is never performed again, whichever delivery asks. When a
previous attempt may have been cut off between call and record, the action is
made safe to repeat: a task state is read before it is set, a DAG run id is
deterministic (409 = done), and an asset event is looked up by its key among
all the asset's events since that attempt started before a new one is created.
Airflow has no idempotency key for asset events, so one gap stays: a post that
timed out here and is created by Airflow only after the retry's look-up.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, ClassVar, Literal

import structlog

from receiver.airflow import (
    AirflowClient,
    AirflowClients,
    PermanentAirflowError,
    TaskInstance,
    TemporaryAirflowError,
)
from receiver.journal import ActionState, Journal
from receiver.metrics import Metrics

log = structlog.get_logger(__name__)

TERMINAL_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
DONE_STATES = frozenset({ActionState.DONE, ActionState.ALREADY})
ASSET_KEY_FIELD = "fluxback_action"


@dataclass(frozen=True, kw_only=True)
class MarkTask:
    """Set the task of an authoring run to the deploy's outcome (every index when `map_index` is None)."""

    kind: ClassVar[str] = "mark_task"
    instance: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int | None
    new_state: Literal["success", "failed"]
    note: str

    @property
    def key(self) -> str:
        index = "all" if self.map_index is None else str(self.map_index)
        return f"mark:{self.instance}:{self.dag_id}:{self.run_id}:{self.task_id}:{index}"

    @property
    def target(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "map_index": self.map_index,
            "new_state": self.new_state,
        }


@dataclass(frozen=True, kw_only=True)
class TriggerDag:
    """Create a DAG run whose deterministic id makes a repeat a 409."""

    kind: ClassVar[str] = "trigger_dag"
    instance: str
    dag_id: str
    dag_run_id: str
    conf: Mapping[str, Any]
    note: str

    @property
    def key(self) -> str:
        return f"trigger:{self.instance}:{self.dag_id}:{self.dag_run_id}"

    @property
    def target(self) -> dict[str, Any]:
        return {"instance": self.instance, "dag_id": self.dag_id, "dag_run_id": self.dag_run_id}


@dataclass(frozen=True, kw_only=True)
class AssetEvent:
    """Post an asset event carrying `key`, by which a repeat finds the one already posted."""

    kind: ClassVar[str] = "asset_event"
    instance: str
    uri: str
    key: str
    extra: Mapping[str, Any]

    @property
    def target(self) -> dict[str, Any]:
        return {"instance": self.instance, "uri": self.uri}


Action = MarkTask | TriggerDag | AssetEvent
"""One thing to do in Airflow; `key` is its idempotency key, `kind` and `target` are recorded."""


@dataclass(frozen=True, kw_only=True)
class Performed:
    """What happened to one action, in words for `/deliveries`."""

    state: ActionState
    text: str


class Actor:
    """Performs actions for deliveries, recording each one in the journal."""

    def __init__(self, journal: Journal, airflow: AirflowClients, metrics: Metrics) -> None:
        self._journal = journal
        self._airflow = airflow
        self._metrics = metrics
        # Two objects whose paths overlap can report the same commit at once: one key, one caller.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def perform(self, delivery_id: int, action: Action, received_at: float) -> Performed:
        """Do `action` for the delivery unless its key is done already; `received_at` is the event's
        arrival (epoch seconds), for the event-to-action metric.

        Raises:
            TemporaryAirflowError: Airflow could not be reached or failed; retrying may succeed.
        """
        match action:
            case MarkTask():
                perform = partial(self._mark_task, action)
            case TriggerDag():
                perform = partial(self._trigger_dag, action)
            case AssetEvent():
                perform = partial(self._asset_event, action)
        return await self._once(delivery_id, action, perform, received_at)

    async def _mark_task(self, action: MarkTask, earlier_attempt: datetime | None) -> Performed:
        client = self._airflow.get(action.instance)
        if action.map_index is None:  # a plain task, or every index of a mapped one
            instances = await client.task_instances(action.dag_id, action.run_id, action.task_id)
        else:
            instances = [
                await client.get_task_instance(action.dag_id, action.run_id, action.task_id, action.map_index)
            ]
        outcomes = [await _mark_one(client, ti, action.new_state, action.note) for ti in instances]
        changed = any(state is ActionState.DONE for state, _ in outcomes)
        return Performed(
            state=ActionState.DONE if changed else ActionState.ALREADY,
            text="; ".join(text for _, text in outcomes),
        )

    async def _trigger_dag(self, action: TriggerDag, earlier_attempt: datetime | None) -> Performed:
        client = self._airflow.get(action.instance)
        run = f"DAG run {action.dag_id}/{action.dag_run_id}"
        if await client.trigger_dag_run(action.dag_id, action.dag_run_id, dict(action.conf), action.note):
            return Performed(state=ActionState.DONE, text=f"{run} created")
        return Performed(state=ActionState.ALREADY, text=f"{run} already exists")

    async def _asset_event(self, action: AssetEvent, earlier_attempt: datetime | None) -> Performed:
        client = self._airflow.get(action.instance)
        asset_id = await client.asset_id(action.uri)
        if earlier_attempt is not None:
            # That attempt may have created the event and died before recording it: look at every
            # event since it started, however many came after.
            found = await client.find_asset_event(asset_id, ASSET_KEY_FIELD, action.key, earlier_attempt)
            if found is not None:
                return Performed(
                    state=ActionState.ALREADY, text=f"asset event {found} for {action.uri} already created"
                )
        event_id = await client.create_asset_event(asset_id, {**action.extra, ASSET_KEY_FIELD: action.key})
        return Performed(state=ActionState.DONE, text=f"asset event {event_id} created for {action.uri}")

    async def _once(
        self,
        delivery_id: int,
        action: Action,
        perform: Callable[[datetime | None], Awaitable[Performed]],
        received_at: float,
    ) -> Performed:
        """Run `perform` unless the key is done; `perform(earlier_attempt)` is told when an
        earlier attempt started, so it can check what that attempt did before repeating itself."""
        key, kind = action.key, action.kind
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            record, created = await self._journal.begin_action(delivery_id, key, kind, action.target)
            if not created and record.state in DONE_STATES:
                result = Performed(
                    state=ActionState.ALREADY,
                    text=f"already done by delivery {record.delivery_id}: {record.result}",
                )
                await self._journal.add_decision(delivery_id, result.text, action=key)
                return result
            try:
                result = await perform(None if created else record.created_at)
            except TemporaryAirflowError as error:
                await self._journal.finish_action(key, ActionState.TEMPORARY_ERROR, error.reason)
                self._metrics.actions.labels(kind=kind, outcome="temporary_error").inc()
                raise
            except PermanentAirflowError as error:
                result = Performed(state=ActionState.PERMANENT_ERROR, text=error.reason)
            await self._journal.finish_action(key, result.state, result.text)
            await self._journal.add_decision(delivery_id, result.text, action=key, state=result.state.value)
            self._metrics.actions.labels(kind=kind, outcome=result.state.value).inc()
            if result.state is ActionState.DONE:
                self._metrics.event_to_action.observe(max(0.0, time.time() - received_at))
            log.info("action.finished", action=key, kind=kind, state=result.state.value, result=result.text)
            return result


async def _mark_one(
    client: AirflowClient, ti: TaskInstance, new_state: Literal["success", "failed"], note: str
) -> tuple[ActionState, str]:
    """Set one task instance's state unless it already finished: a terminal state is never overwritten."""
    index = None if ti.map_index < 0 else ti.map_index
    where = f"task {ti.task_id}{'' if index is None else f'[{index}]'} of {ti.dag_id} run {ti.run_id}"
    if ti.state in TERMINAL_TASK_STATES:
        return ActionState.ALREADY, f"{where}: task already {ti.state}"
    if not await client.set_task_instance_state(ti.dag_id, ti.run_id, ti.task_id, index, new_state, note):
        return ActionState.ALREADY, f"{where}: task already {new_state}"
    return ActionState.DONE, f"{where}: marked {new_state}"
