"""The three things Fluxback does in Airflow, each at most once.

Every action has an idempotency key and is recorded in the journal *before*
the call (`started`) and after it (`done`, `already`, an error). A key that is
already done is never performed again, whichever delivery asks. When a
previous attempt may have been cut off between call and record, the action is
made safe to repeat: a task state is read before it is set, a DAG run id is
deterministic (409 = done), and an asset event is looked up by its key among
the asset's recent events before a new one is created.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from receiver.airflow import AirflowClient, AirflowClients, AirflowError, TaskInstance, TemporaryAirflowError
from receiver.journal import ActionState, Journal
from receiver.metrics import Metrics

log = structlog.get_logger(__name__)

TERMINAL_TASK_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
DONE_STATES = frozenset({ActionState.DONE, ActionState.ALREADY})
ASSET_KEY_FIELD = "fluxback_action"


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

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def mark_task(
        self,
        delivery_id: int,
        *,
        instance: str,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int | None,
        new_state: Literal["success", "failed"],
        note: str,
        received_at: float,
    ) -> Performed:
        index = "all" if map_index is None else str(map_index)
        key = f"mark:{instance}:{dag_id}:{run_id}:{task_id}:{index}"
        target = {
            "instance": instance,
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": map_index,
            "new_state": new_state,
        }

        async def perform(retrying: bool) -> Performed:
            client = self._airflow.get(instance)
            if map_index is None:  # a plain task, or every index of a mapped one
                instances = await client.task_instances(dag_id, run_id, task_id)
            else:
                instances = [await client.get_task_instance(dag_id, run_id, task_id, map_index)]
            outcomes = [await _mark_one(client, ti, new_state, note) for ti in instances]
            changed = any(state is ActionState.DONE for state, _ in outcomes)
            return Performed(
                state=ActionState.DONE if changed else ActionState.ALREADY,
                text="; ".join(text for _, text in outcomes),
            )

        return await self._once(delivery_id, key, "mark_task", target, perform, received_at)

    async def trigger_dag(
        self,
        delivery_id: int,
        *,
        instance: str,
        dag_id: str,
        dag_run_id: str,
        conf: Mapping[str, Any],
        note: str,
        received_at: float,
    ) -> Performed:
        key = f"trigger:{instance}:{dag_id}:{dag_run_id}"
        target = {"instance": instance, "dag_id": dag_id, "dag_run_id": dag_run_id}

        async def perform(retrying: bool) -> Performed:
            created = await self._airflow.get(instance).trigger_dag_run(dag_id, dag_run_id, dict(conf), note)
            if created:
                return Performed(state=ActionState.DONE, text=f"DAG run {dag_id}/{dag_run_id} created")
            return Performed(state=ActionState.ALREADY, text=f"DAG run {dag_id}/{dag_run_id} already exists")

        return await self._once(delivery_id, key, "trigger_dag", target, perform, received_at)

    async def asset_event(
        self,
        delivery_id: int,
        *,
        instance: str,
        uri: str,
        key: str,
        extra: Mapping[str, Any],
        received_at: float,
    ) -> Performed:
        target = {"instance": instance, "uri": uri}

        async def perform(retrying: bool) -> Performed:
            client = self._airflow.get(instance)
            asset_id = await client.asset_id(uri)
            if retrying:
                # A previous attempt may have created the event and died before recording it.
                found = await client.find_asset_event(asset_id, ASSET_KEY_FIELD, key)
                if found is not None:
                    return Performed(
                        state=ActionState.ALREADY, text=f"asset event {found} for {uri} already created"
                    )
            event_id = await client.create_asset_event(asset_id, {**extra, ASSET_KEY_FIELD: key})
            return Performed(state=ActionState.DONE, text=f"asset event {event_id} created for {uri}")

        return await self._once(delivery_id, key, "asset_event", target, perform, received_at)

    async def _once(
        self,
        delivery_id: int,
        key: str,
        kind: str,
        target: Mapping[str, Any],
        perform: Callable[[bool], Awaitable[Performed]],
        received_at: float,
    ) -> Performed:
        """Run `perform` unless the key is done; `perform(retrying)` is told when an earlier
        attempt got as far as starting, so it can check before repeating itself."""
        async with self._lock(key):
            record, created = await self._journal.begin_action(delivery_id, key, kind, target)
            if not created and record.state in DONE_STATES:
                result = Performed(
                    state=ActionState.ALREADY,
                    text=f"already done by delivery {record.delivery_id}: {record.result}",
                )
                await self._journal.add_decision(delivery_id, result.text, action=key)
                return result
            try:
                result = await perform(not created)
            except TemporaryAirflowError as error:
                await self._journal.finish_action(key, ActionState.TEMPORARY_ERROR, error.reason)
                self._metrics.actions.labels(kind=kind, outcome="temporary_error").inc()
                raise
            except AirflowError as error:
                result = Performed(state=ActionState.PERMANENT_ERROR, text=error.reason)
            await self._journal.finish_action(key, result.state, result.text)
            await self._journal.add_decision(delivery_id, result.text, action=key, state=result.state.value)
            self._metrics.actions.labels(kind=kind, outcome=result.state.value).inc()
            if result.state is ActionState.DONE:
                self._metrics.event_to_action.observe(max(0.0, time.time() - received_at))
            log.info("action", action=key, kind=kind, state=result.state.value, result=result.text)
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
