"""What the pipeline did, as Kubernetes Events on the Flux object (kmock over real HTTP)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import kmock
from kubernetes_asyncio.client import EventsV1Api

from receiver.actions import MarkTask, Performed, TriggerDag
from receiver.events import parse_event
from receiver.intake import new_delivery
from receiver.journal import ActionState, Correlation, Delivery
from receiver.journal.sqlite import SqliteJournal
from receiver.kube import KubernetesEvents
from receiver.kube.recorder import EventRecorder
from receiver.metrics import Metrics
from tests.flux_replay import event_body
from tests.kube_cluster import eventually
from tests.unit.test_kube_recorder import events_api, stored_events

__all__ = ["events_api"]  # the fixture, shared with the recorder tests

REVISION = "main@sha1:3b9f1c2a7d4e5f60718293a4b5c6d7e8f9012345"


async def journaled(journal: SqliteJournal) -> Delivery:
    body = event_body(name="apps", revision=REVISION)
    entry = new_delivery(
        parse_event(body),
        body=body,
        identity="x",
        received_at=datetime.now(UTC),
        authenticated_by="hmac",
        source="webhook",
    )
    delivery = await journal.get((await journal.append(entry)).id)
    assert delivery is not None
    return delivery


async def test_actions_refusals_and_dead_letters_become_events_on_the_flux_object(
    kmock: kmock.KubernetesEmulator, events_api: EventsV1Api, journal: SqliteJournal
) -> None:
    metrics = Metrics()
    recorder = EventRecorder(metrics, instance="fluxback-0")
    observer = KubernetesEvents(recorder)
    delivery = await journaled(journal)
    mark = MarkTask(
        instance="default",
        dag_id="deploy_model",
        run_id="manual__1",
        task_id="wait_for_deploy",
        map_index=None,
        new_state="success",
        note="",
    )
    marked = "task wait_for_deploy of deploy_model run manual__1: marked success"
    await observer.performed(delivery, mark, Performed(state=ActionState.DONE, text=marked))
    trigger = TriggerDag(
        instance="default", dag_id="post_deploy", dag_run_id="fluxback__apps", conf={}, note=""
    )
    await observer.performed(
        delivery, trigger, Performed(state=ActionState.PERMANENT_ERROR, text="Airflow 404")
    )
    refused = Correlation(
        commit="a" * 40,
        committed_at=None,
        subject="s",
        dag_id="other",
        run_id="r1",
        verdict="DAG 'other' not allowed for Kustomization/flux-system/apps by the policy",
    )
    await observer.refused(delivery, refused)
    await observer.dead(delivery, "Airflow unreachable")
    task = asyncio.create_task(recorder.run(events_api))
    try:
        await eventually(lambda: len(stored_events(kmock)) == 4)
    finally:
        task.cancel()
    events = {e["reason"]: e for e in stored_events(kmock)}
    assert {e["regarding"]["name"] for e in events.values()} == {"apps"}
    assert {e["metadata"]["namespace"] for e in events.values()} == {"flux-system"}
    about = f"(revision {REVISION}, delivery {delivery.id})"
    assert (events["AirflowTaskMarked"]["type"], events["AirflowTaskMarked"]["note"]) == (
        "Normal",
        f"{marked} {about}",
    )
    assert events["AirflowDagTriggered"]["type"] == "Warning"
    assert events["AirflowDagTriggered"]["note"] == f"post_deploy/fluxback__apps: Airflow 404 {about}"
    assert events["CorrelationRefused"]["note"] == (
        f"commit {'a' * 12} names other/r1: DAG 'other' not allowed for Kustomization/flux-system/apps"
        f" by the policy {about}"
    )
    assert events["DeliveryDead"]["note"].startswith("given up after 0 attempt(s): Airflow unreachable")
