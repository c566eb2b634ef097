"""Crash recovery of actions against a real Airflow: an action whose call went through but
whose result was never recorded (the process died in between) is not performed twice."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from receiver.actions import ASSET_KEY_FIELD, Actor, AssetEvent
from receiver.airflow import AirflowClient, AirflowClients
from receiver.config import AirflowInstance
from receiver.journal import ActionState, NewDelivery
from receiver.journal.sqlite import SqliteJournal
from receiver.metrics import Metrics
from tests.integration.airflow_harness import AirflowServer

pytestmark = pytest.mark.integration

ASSET = "flux://test/Kustomization/flux-system/apps-smoke"


@pytest.fixture
async def actor(tmp_path: Path, airflow: AirflowServer, journal: SqliteJournal) -> AsyncIterator[Actor]:
    airflow.wait_for_dags("fluxback_asset_consumer", timeout=90)
    (tmp_path / "user").write_text(airflow.username)
    (tmp_path / "password").write_text(airflow.password)
    instance = AirflowInstance(
        url=airflow.url, username_file=tmp_path / "user", password_file=tmp_path / "password"
    )
    clients = AirflowClients({"default": AirflowClient("default", instance)})
    yield Actor(journal, clients, Metrics())
    await clients.close()


async def delivery(journal: SqliteJournal) -> int:
    body = uuid.uuid4().hex.encode()
    result = await journal.append(
        NewDelivery(
            body=body,
            body_sha256=hashlib.sha256(body).hexdigest(),
            received_at=datetime.now(UTC),
            kind="Kustomization",
            namespace="flux-system",
            name="apps-smoke",
            reason="ReconciliationSucceeded",
            severity="info",
            outcome="success",
            revision=None,
            commit=None,
            dedupe_key=None,
            authenticated_by="hmac",
        )
    )
    return result.id


async def test_an_asset_event_sent_before_a_crash_is_found_not_sent_again(
    airflow: AirflowServer, journal: SqliteJournal, actor: Actor
) -> None:
    delivery_id = await delivery(journal)
    key = f"asset:default:{ASSET}:{uuid.uuid4().hex}:success"
    asset_id = next(a["id"] for a in airflow.api("GET", "/assets")["assets"] if a["uri"] == ASSET)
    # The first attempt recorded `started`, created the event, and died before recording that.
    await journal.begin_action(delivery_id, key, "asset_event", {"uri": ASSET})
    sent = airflow.api("POST", "/assets/events", {"asset_id": asset_id, "extra": {ASSET_KEY_FIELD: key}})

    performed = await actor.perform(
        delivery_id, AssetEvent(instance="default", uri=ASSET, key=key, extra={"revision": "r"}), 0.0
    )

    assert performed.state is ActionState.ALREADY
    assert f"asset event {sent['id']}" in performed.text
    same_key = [e for e in airflow.asset_events(asset_id) if e["extra"].get(ASSET_KEY_FIELD) == key]
    assert len(same_key) == 1


async def test_an_asset_event_that_never_left_is_sent_on_recovery(
    airflow: AirflowServer, journal: SqliteJournal, actor: Actor
) -> None:
    delivery_id = await delivery(journal)
    key = f"asset:default:{ASSET}:{uuid.uuid4().hex}:success"
    await journal.begin_action(delivery_id, key, "asset_event", {"uri": ASSET})  # died before the call

    performed = await actor.perform(
        delivery_id, AssetEvent(instance="default", uri=ASSET, key=key, extra={"revision": "r"}), 0.0
    )

    assert performed.state is ActionState.DONE
    stored = await journal.get(delivery_id)
    assert stored is not None
    assert [(a.key, a.state) for a in stored.actions] == [(key, ActionState.DONE)]
    asset_id = next(a["id"] for a in airflow.api("GET", "/assets")["assets"] if a["uri"] == ASSET)
    [event] = [e for e in airflow.asset_events(asset_id) if e["extra"].get(ASSET_KEY_FIELD) == key]
    assert event["extra"]["revision"] == "r"
