"""Kubernetes Events on Flux objects (kmock over real HTTP): the right object and reason, repeats
folded into a series, bursts rate-limited per object, and API failures that change nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import kmock
import pytest
from kmock import KubernetesError, resource
from kubernetes_asyncio.client import ApiClient, Configuration, EventsV1Api

from receiver.events import ObjectRef
from receiver.kube.recorder import BURST, EventRecorder, Occurrence
from receiver.metrics import Metrics
from tests.kube_cluster import eventually

APPS = ObjectRef(
    kind="Kustomization",
    namespace="flux-system",
    name="apps",
    api_version="kustomize.toolkit.fluxcd.io/v1",
    uid="uid-apps",
)
EVENTS = "events.k8s.io/v1/events"
NOTE = "marked deploy_model/manual__1/wait_for_deploy success: revision main@sha1:3b9f1c2a7d4e; delivery 7"


class FrozenClock:
    """Time that does not pass, so no token comes back during a burst."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def events_api(kmock: kmock.KubernetesEmulator) -> AsyncIterator[EventsV1Api]:
    kmock.resources[EVENTS] = kmock.ResourceInfo(namespaced=True, kind="Event")
    async with ApiClient(Configuration(host=str(kmock.url).rstrip("/"))) as client:
        yield EventsV1Api(client)


def stored_events(server: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
    return [dict(obj.raw) for (resource, _, _), obj in server.objects.items() if resource.plural == "events"]


def counted(metrics: Metrics, reason: str, outcome: str) -> float:
    sample = metrics.registry.get_sample_value(
        "fluxback_kube_events_total", {"reason": reason, "outcome": outcome}
    )
    return sample or 0.0


async def test_an_event_is_recorded_on_the_flux_object(
    kmock: kmock.KubernetesEmulator, events_api: EventsV1Api
) -> None:
    metrics = Metrics()
    wall = datetime(2026, 11, 25, 9, 30, 0, 123456, tzinfo=UTC)
    recorder = EventRecorder(metrics, instance="fluxback-7d9f-abcde", wall_clock=lambda: wall)
    recorder.record(APPS, reason="AirflowTaskMarked", action="MarkTask", note=NOTE)
    task = asyncio.create_task(recorder.run(events_api))
    try:
        await eventually(lambda: counted(metrics, "AirflowTaskMarked", "recorded") == 1)
    finally:
        task.cancel()
    (event,) = stored_events(kmock)
    assert event["metadata"]["namespace"] == "flux-system" and event["metadata"]["name"].startswith("apps.")
    assert event["regarding"] == {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "namespace": "flux-system",
        "name": "apps",
        "uid": "uid-apps",
    }
    assert (event["reason"], event["action"], event["type"], event["note"]) == (
        "AirflowTaskMarked",
        "MarkTask",
        "Normal",
        NOTE,
    )
    assert (event["reportingController"], event["reportingInstance"]) == (
        "fluxback.io/fluxback",
        "fluxback-7d9f-abcde",
    )
    assert event["eventTime"].startswith("2026-11-25T09:30:00.123456")


async def test_a_burst_is_one_event_with_a_series_and_is_rate_limited(
    kmock: kmock.KubernetesEmulator, events_api: EventsV1Api
) -> None:
    metrics = Metrics()
    clock = FrozenClock()
    recorder = EventRecorder(metrics, instance="fluxback-0", clock=clock)
    refused = {"reason": "CorrelationRefused", "action": "Correlate", "type": "Warning"}
    for index in range(BURST + 5):
        await recorder.post(events_api, _occurrence(note=f"commit {index}: DAG 'x' not allowed", **refused))
    (event,) = stored_events(kmock)
    assert event["series"]["count"] == BURST
    assert counted(metrics, "CorrelationRefused", "recorded") == BURST
    assert counted(metrics, "CorrelationRefused", "rate_limited") == 5
    # Another object has its own budget; after 5 minutes this one gets a token back.
    other = ObjectRef(kind="Kustomization", namespace="flux-system", name="infra")
    await recorder.post(events_api, _occurrence(note="x", regarding=other, **refused))
    clock.now += 300
    await recorder.post(events_api, _occurrence(note="later", **refused))
    events = {e["regarding"]["name"]: e for e in stored_events(kmock)}
    assert events["apps"]["series"]["count"] == BURST + 6  # the limited repeats still counted
    assert "series" not in events["infra"]


async def test_a_repeat_after_the_series_window_is_a_new_event(
    kmock: kmock.KubernetesEmulator, events_api: EventsV1Api
) -> None:
    clock = FrozenClock()
    recorder = EventRecorder(Metrics(), instance="fluxback-0", clock=clock)
    await recorder.post(events_api, _occurrence(note="first"))
    clock.now += 6 * 60 + 1
    await recorder.post(events_api, _occurrence(note="second"))
    assert sorted(e["note"] for e in stored_events(kmock)) == ["first", "second"]


@pytest.mark.parametrize("status", [403, 500])
async def test_an_events_api_that_refuses_is_counted_and_changes_nothing_else(
    kmock: kmock.KubernetesEmulator, events_api: EventsV1Api, status: int
) -> None:
    kmock["post", resource(EVENTS)] << KubernetesError(status=status, reason="Refused")
    metrics = Metrics()
    recorder = EventRecorder(metrics, instance="fluxback-0")
    await recorder.post(events_api, _occurrence(note="marked"))  # returns: nothing raised
    assert counted(metrics, "AirflowTaskMarked", "failed") == 1
    recorder.record(
        APPS, reason="DeliveryDead", action="Deliver", note="dead", type="Warning"
    )  # still queues


def _occurrence(**fields: Any) -> Occurrence:
    values: dict[str, Any] = {"regarding": APPS, "reason": "AirflowTaskMarked", "action": "MarkTask"}
    return Occurrence(**(values | fields))
