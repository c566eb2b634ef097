"""Kubernetes Events for what the pipeline did: each Airflow action, each refusal, each dead letter.

A `receiver.pipeline.Observer` that records them on the Flux object through
`receiver.kube.recorder`, whose `record` only queues: no action waits for the
API, and a failed post changes nothing else. The actions are read through
small protocols so that this package never imports the Airflow side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from receiver.events import ObjectRef, parse_event
from receiver.journal import ActionState, Correlation, Delivery
from receiver.kube.recorder import EventRecorder

REASONS: Mapping[str, tuple[str, str]] = {
    "mark_task": ("AirflowTaskMarked", "MarkTask"),
    "trigger_dag": ("AirflowDagTriggered", "TriggerDag"),
    "asset_event": ("AirflowAssetEvent", "CreateAssetEvent"),
}
"""Action kind -> (Event reason, Event action)."""


class PerformedAction(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def target(self) -> Mapping[str, Any]: ...


class ActionResult(Protocol):
    @property
    def state(self) -> ActionState: ...

    @property
    def text(self) -> str: ...


def _regarding(delivery: Delivery) -> ObjectRef:
    """The Flux object as its event named it, with its apiVersion and uid when they were sent."""
    return parse_event(delivery.body).involved_object


def _about(delivery: Delivery) -> str:
    return f"revision {delivery.revision}, delivery {delivery.id}"


def _target(target: Mapping[str, Any]) -> str:
    """`dag/run/task` (with the map index) of a task, `dag/run` of a DAG run, or the asset URI."""
    parts = (target.get(key) for key in ("dag_id", "run_id", "dag_run_id", "task_id", "map_index", "uri"))
    return "/".join(str(part) for part in parts if part is not None)


class KubernetesEvents:
    """Tells the Flux object, in one line per Event, what Fluxback did about it and why."""

    def __init__(self, recorder: EventRecorder) -> None:
        self._recorder = recorder

    async def performed(self, delivery: Delivery, action: PerformedAction, result: ActionResult) -> None:
        reason, verb = REASONS.get(action.kind, ("AirflowAction", "Act"))
        refused = result.state is ActionState.PERMANENT_ERROR
        # A result names its task, run or asset; Airflow's refusal ("404: run not found") does not.
        what = f"{_target(action.target)}: {result.text}" if refused else result.text
        self._recorder.record(
            _regarding(delivery),
            reason=reason,
            action=verb,
            note=f"{what} ({_about(delivery)})",
            type="Warning" if refused else "Normal",
        )

    async def refused(self, delivery: Delivery, correlation: Correlation) -> None:
        run = f"{correlation.dag_id}/{correlation.run_id}" if correlation.dag_id else "no Airflow run"
        self._recorder.record(
            _regarding(delivery),
            reason="CorrelationRefused",
            action="Correlate",
            note=f"commit {correlation.commit[:12]} names {run}: {correlation.verdict} ({_about(delivery)})",
            type="Warning",
        )

    async def dead(self, delivery: Delivery, reason: str) -> None:
        self._recorder.record(
            _regarding(delivery),
            reason="DeliveryDead",
            action="Deliver",
            note=f"given up after {delivery.attempts} attempt(s): {reason}; replay it once fixed"
            f" ({_about(delivery)})",
            type="Warning",
        )
