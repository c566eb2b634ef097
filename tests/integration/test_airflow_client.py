"""receiver.airflow against a real Airflow 3.3.2; failures no Airflow can be made to show are in
tests/unit/test_airflow_client.py, against a tiny local server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from receiver.airflow import (
    NOTE_MAX_CHARS,
    AirflowClient,
    PermanentAirflowError,
)
from tests.helpers import Calls, login_instance, recorder, token_instance
from tests.integration.airflow_harness import USERS, AirflowServer

pytestmark = pytest.mark.integration

WAIT_DAG = "fluxback_wait"
WAIT_TASK = "wait_for_deploy"
MAPPED_DAG = "fluxback_wait_mapped"
POST_DEPLOY = "post_deploy"
CONSUMER = "fluxback_asset_consumer"
APPS = "flux://test/Kustomization/flux-system/apps"
APPS_SMOKE = "flux://test/Kustomization/flux-system/apps-smoke"
QUIET_DAG = "fluxback_replica_assets"
QUIET = "flux://test/Kustomization/flux-system/replica-quiet"
"""Nothing schedules on it (tests/integration/dags/fluxback_replica_assets.py): its events start no runs."""
SINCE = datetime.now(UTC)


@pytest.fixture(scope="module")
def live(airflow: AirflowServer) -> AirflowServer:
    """Airflow with this file's DAGs parsed and unpaused."""
    airflow.wait_for_dags(WAIT_DAG, POST_DEPLOY, CONSUMER)
    return airflow


@pytest.fixture
def calls() -> Calls:
    """What the client reported through `on_request`: (instance, method label, status label)."""
    return []


@pytest.fixture
async def client(live: AirflowServer, tmp_path: Path, calls: Calls) -> AsyncIterator[AirflowClient]:
    client = AirflowClient(
        "test", login_instance(live.url, tmp_path, "admin", USERS["admin"]), on_request=recorder(calls)
    )
    yield client
    await client.close()


def expired_jwt(secret: str) -> str:
    """A correctly signed admin token (claims as Airflow mints them) that expired an hour ago."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    now = int(time.time())
    header = {"alg": "HS512", "kid": "not-used", "typ": "JWT"}
    claims = {
        "sub": "admin",
        "role": "admin",
        "teams": [],
        "jti": uuid.uuid4().hex,
        "aud": "apache-airflow",
        "iat": now - 7200,
        "nbf": now - 7200,
        "exp": now - 3600,
    }
    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha512).digest()
    return (signing_input + b"." + b64(signature)).decode()


def new_run_id(prefix: str) -> str:
    """A run id shaped like Airflow's own (`:` and `+` must survive the URL path)."""
    return f"{prefix}__2026-11-25T08:00:00+00:00_{uuid.uuid4().hex[:8]}"


# -- authentication -------------------------------------------------------------------------------


async def test_mints_one_token_and_reuses_it(
    live: AirflowServer, client: AirflowClient, calls: Calls
) -> None:
    assert await client.health() is True  # needs no token
    calls.clear()
    asset_id = await client.asset_id(APPS)
    assert await client.find_asset_event(asset_id, "nobody", "nothing", SINCE) is None
    assert await client.find_asset_event(asset_id, "nobody", "nothing", SINCE) is None
    assert calls == [
        ("test", "token", "201"),
        ("test", "get_assets", "200"),
        ("test", "get_asset_events", "200"),
        ("test", "get_asset_events", "200"),
    ]


async def test_expired_token_is_reminted_once(
    live: AirflowServer, client: AirflowClient, calls: Calls
) -> None:
    expired = expired_jwt(live.jwt_secret)
    assert live.request("GET", "/api/v2/assets", token=expired) == (401, {"detail": "Token Expired"})
    # Pretend the client believes the token is still good (clock skew): only the 401 tells it.
    client._tokens._token, client._tokens._refresh_at = expired, time.time() + 3600

    assert await client.asset_id(APPS) > 0

    assert calls == [("test", "get_assets", "401"), ("test", "token", "201"), ("test", "get_assets", "200")]


async def test_token_past_its_exp_is_reminted_before_use(
    live: AirflowServer, client: AirflowClient, calls: Calls
) -> None:
    client._tokens._token, client._tokens._refresh_at = expired_jwt(live.jwt_secret), 0.0

    await client.asset_id(APPS)

    assert calls == [("test", "token", "201"), ("test", "get_assets", "200")]


async def test_token_signed_with_another_secret_is_reminted(
    live: AirflowServer, client: AirflowClient, calls: Calls
) -> None:
    client._tokens._token, client._tokens._refresh_at = (
        expired_jwt("a secret Airflow no longer uses"),
        time.time() + 3600,
    )

    await client.asset_id(APPS)

    assert calls == [("test", "get_assets", "403"), ("test", "token", "201"), ("test", "get_assets", "200")]


async def test_static_garbage_token_is_a_permanent_auth_error(live: AirflowServer, tmp_path: Path) -> None:
    client = AirflowClient("test", token_instance(live.url, tmp_path, "not-a-jwt-s3cr3t"))
    try:
        with pytest.raises(PermanentAirflowError) as raised:
            await client.asset_id(APPS)
    finally:
        await client.close()
    assert raised.value.status == 403
    assert "static token" in raised.value.reason
    assert str(tmp_path / "token") in raised.value.reason
    assert "s3cr3t" not in raised.value.reason


async def test_wrong_password_is_permanent_and_not_echoed(live: AirflowServer, tmp_path: Path) -> None:
    client = AirflowClient("test", login_instance(live.url, tmp_path, "admin", "wrong-pa55word"))
    try:
        with pytest.raises(PermanentAirflowError) as raised:
            await client.trigger_dag_run(POST_DEPLOY, new_run_id("never"), {})
    finally:
        await client.close()
    assert raised.value.status == 401
    assert "login refused" in raised.value.reason
    assert "pa55word" not in raised.value.reason


async def test_role_without_permission_gets_a_hint(live: AirflowServer, tmp_path: Path) -> None:
    instance = login_instance(live.url, tmp_path, "viewer", USERS["viewer"])
    client = AirflowClient("test", instance)
    try:
        with pytest.raises(PermanentAirflowError) as raised:
            await client.trigger_dag_run(POST_DEPLOY, new_run_id("viewer"), {})
    finally:
        await client.close()
    assert raised.value.status == 403
    assert "Forbidden" in raised.value.reason
    assert "role" in raised.value.reason


# -- task instances -------------------------------------------------------------------------------


async def test_success_resolves_a_deferred_wait(live: AirflowServer, client: AirflowClient) -> None:
    run_id = new_run_id("deploy")
    live.trigger(WAIT_DAG, run_id, {"commit": "abc1234"})
    await live.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, {"deferred"})

    waiting = await client.get_task_instance(WAIT_DAG, run_id, WAIT_TASK, None)
    assert (waiting.state, waiting.map_index, waiting.note) == ("deferred", -1, None)

    note = "Flux: Kustomization flux-system/apps applied abc1234"
    assert await client.set_task_instance_state(WAIT_DAG, run_id, WAIT_TASK, None, "success", note) is True
    assert await live.wait_for_run_state(WAIT_DAG, run_id) == "success"
    assert live.task_states(WAIT_DAG, run_id) == {
        WAIT_TASK: "success",
        "after_deploy": "success",
        "rollback": "skipped",
    }
    assert await client.set_task_instance_state(WAIT_DAG, run_id, WAIT_TASK, None, "success", note) is False
    done = await client.get_task_instance(WAIT_DAG, run_id, WAIT_TASK, None)
    assert (done.state, done.note) == ("success", note)


async def test_a_plain_task_is_read_with_one_get_and_a_mapped_one_listed(
    live: AirflowServer, client: AirflowClient, calls: Calls
) -> None:
    live.wait_for_dags(MAPPED_DAG)
    plain, mapped = new_run_id("deploy"), new_run_id("deploy")
    live.trigger(WAIT_DAG, plain)
    live.trigger(MAPPED_DAG, mapped)
    await live.wait_for_ti_state(WAIT_DAG, plain, WAIT_TASK, {"deferred"})
    for index in (0, 1):
        await live.wait_for_ti_state(MAPPED_DAG, mapped, f"{WAIT_TASK}[{index}]", {"deferred"}, within=90)

    [one] = await client.task_instances(WAIT_DAG, plain, WAIT_TASK)
    assert (one.map_index, one.state) == (-1, "deferred")
    assert [call[1:] for call in calls if call[1] != "token"] == [("get_task_instance", "200")]
    calls.clear()
    listed = await client.task_instances(MAPPED_DAG, mapped, WAIT_TASK)
    assert sorted((ti.map_index, ti.state) for ti in listed) == [(0, "deferred"), (1, "deferred")]
    assert calls == [("test", "get_task_instance", "404"), ("test", "list_task_instances", "200")]


async def test_failed_runs_the_rollback_and_truncates_the_note(
    live: AirflowServer, client: AirflowClient
) -> None:
    run_id = new_run_id("deploy")
    live.trigger(WAIT_DAG, run_id)
    await live.wait_for_ti_state(WAIT_DAG, run_id, WAIT_TASK, {"deferred"})

    note = "Flux: health check failed " + "x" * 2000
    assert await client.set_task_instance_state(WAIT_DAG, run_id, WAIT_TASK, None, "failed", note) is True

    assert await live.wait_for_run_state(WAIT_DAG, run_id) == "failed"
    states = live.task_states(WAIT_DAG, run_id)
    assert (states[WAIT_TASK], states["rollback"], states["after_deploy"]) == (
        "failed",
        "success",
        "upstream_failed",
    )
    saved = (await client.get_task_instance(WAIT_DAG, run_id, WAIT_TASK)).note
    assert saved is not None
    assert len(saved) == NOTE_MAX_CHARS
    assert saved.startswith("Flux: health check failed xxx")


async def test_unknown_run_or_task_is_a_permanent_404_naming_it(
    live: AirflowServer, client: AirflowClient
) -> None:
    with pytest.raises(PermanentAirflowError) as raised:
        await client.get_task_instance(WAIT_DAG, "no-such-run", WAIT_TASK)
    assert raised.value.status == 404
    assert raised.value.reason.startswith("Airflow 404: dag run not found: dag fluxback_wait run no-such-run")

    with pytest.raises(PermanentAirflowError) as raised:
        await client.set_task_instance_state(WAIT_DAG, "no-such-run", WAIT_TASK, None, "success", "")
    assert "dag run not found" in raised.value.reason

    run_id = new_run_id("deploy")
    live.trigger(WAIT_DAG, run_id)
    with pytest.raises(PermanentAirflowError) as raised:
        await client.set_task_instance_state(WAIT_DAG, run_id, "no_such_task", None, "success", "")
    assert raised.value.status == 404
    assert raised.value.reason.startswith(
        f"Airflow 404: task instance not found: dag fluxback_wait run {run_id} task no_such_task"
    )
    assert "not found in Dag" in raised.value.reason


# -- DAG runs -------------------------------------------------------------------------------------


async def test_trigger_with_a_fixed_run_id_is_idempotent(live: AirflowServer, client: AirflowClient) -> None:
    run_id = new_run_id("post-deploy")
    conf = {"revision": "main@sha1:abc1234", "commits": ["abc1234"]}

    assert await client.trigger_dag_run(POST_DEPLOY, run_id, conf, note="from Fluxback") is True
    assert await client.trigger_dag_run(POST_DEPLOY, run_id, {"other": True}) is False

    run = live.dag_run(POST_DEPLOY, run_id)
    assert (run["conf"], run["note"], run["logical_date"]) == (conf, "from Fluxback", None)
    assert await live.wait_for_run_state(POST_DEPLOY, run_id) == "success"
    assert live.xcom(POST_DEPLOY, run_id, "report") == conf


async def test_trigger_of_an_unknown_dag_is_permanent(client: AirflowClient) -> None:
    with pytest.raises(PermanentAirflowError) as raised:
        await client.trigger_dag_run("no_such_dag", new_run_id("x"), {})
    assert raised.value.status == 404
    assert "no_such_dag" in raised.value.reason


# -- assets ---------------------------------------------------------------------------------------


async def test_asset_lookup_is_exact_and_cached(client: AirflowClient, calls: Calls) -> None:
    apps = await client.asset_id(APPS)
    smoke = await client.asset_id(APPS_SMOKE)
    assert apps != smoke
    assert await client.asset_id(APPS) == apps
    assert [c for c in calls if c[1] == "get_assets"] == [("test", "get_assets", "200")] * 2

    # A substring of both URIs, and a URI whose `_` the server's ILIKE treats as a wildcard.
    for unknown in (
        "flux://test/Kustomization/flux-system/app",
        "flux://test/Kustomization/flux_system/apps",
    ):
        with pytest.raises(PermanentAirflowError, match="no DAG references that asset URI"):
            await client.asset_id(unknown)


async def test_an_asset_event_is_found_behind_more_than_a_page_of_newer_ones(
    live: AirflowServer, client: AirflowClient
) -> None:
    live.wait_for_dags(QUIET_DAG)
    asset_id = await client.asset_id(QUIET)
    before = datetime.now(UTC)
    key = uuid.uuid4().hex
    event_id = await client.create_asset_event(asset_id, {"fluxback_action": key})
    for index in range(120):  # more than one page (100) of newer events
        await client.create_asset_event(asset_id, {"fluxback_action": f"{key}-{index}"})

    assert await client.find_asset_event(asset_id, "fluxback_action", key, before) == event_id
    assert await client.find_asset_event(asset_id, "fluxback_action", f"{key}-119", before) is not None
    assert await client.find_asset_event(asset_id, "fluxback_action", f"{key}-120", before) is None


async def test_asset_event_reaches_the_consumer_and_can_be_found(
    live: AirflowServer, client: AirflowClient
) -> None:
    delivery = uuid.uuid4().hex
    asset_id = await client.asset_id(APPS)
    extra = {"fluxback_delivery": delivery, "revision": "main@sha1:abc1234"}

    event_id = await client.create_asset_event(asset_id, extra)

    assert await client.find_asset_event(asset_id, "fluxback_delivery", delivery, SINCE) == event_id
    assert await client.find_asset_event(asset_id, "fluxback_delivery", "another delivery", SINCE) is None
    assert live.asset_events(asset_id)[0]["id"] == event_id

    def consumer_saw_it() -> tuple[bool, list[Any]]:
        seen = [
            live.xcom(CONSUMER, run["dag_run_id"], "show_events")
            for run in live.dag_runs(CONSUMER)
            if run["state"] == "success"
        ]
        return any(e.get("fluxback_delivery") == delivery for extras in seen for e in extras), seen

    await live.wait_until(consumer_saw_it, 60, f"a {CONSUMER} run that saw delivery {delivery}")


# -- transport failures ---------------------------------------------------------------------------
