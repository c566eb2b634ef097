"""receiver.airflow against a real Airflow 3.3.2 (and, for 429/503/timeouts, a tiny local server)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from receiver.airflow import (
    NOTE_MAX_CHARS,
    AirflowClient,
    AirflowClients,
    PermanentAirflowError,
    TemporaryAirflowError,
)
from receiver.config import AirflowConfig, AirflowInstance
from tests.integration.airflow_harness import USERS, AirflowServer, free_port

pytestmark = pytest.mark.integration

WAIT_DAG = "fluxback_wait"
WAIT_TASK = "wait_for_deploy"
POST_DEPLOY = "post_deploy"
CONSUMER = "fluxback_asset_consumer"
APPS = "flux://test/Kustomization/flux-system/apps"
APPS_SMOKE = "flux://test/Kustomization/flux-system/apps-smoke"

Calls = list[tuple[str, str, str]]


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
    client = AirflowClient("test", login_instance(live.url, tmp_path), on_request=recorder(calls))
    yield client
    await client.close()


def recorder(calls: Calls) -> Any:
    def on_request(instance: str, method: str, status: str, seconds: float) -> None:
        assert seconds >= 0
        calls.append((instance, method, status))

    return on_request


def login_instance(
    url: str, tmp_path: Path, username: str = "admin", password: str = USERS["admin"], **extra: Any
) -> AirflowInstance:
    (tmp_path / f"{username}.user").write_text(f"{username}\n")
    (tmp_path / f"{username}.password").write_text(f"{password}\n")
    return AirflowInstance(
        url=url,
        username_file=tmp_path / f"{username}.user",
        password_file=tmp_path / f"{username}.password",
        **extra,
    )


def token_instance(url: str, tmp_path: Path, token: str, **extra: Any) -> AirflowInstance:
    (tmp_path / "token").write_text(token)
    return AirflowInstance(url=url, token_file=tmp_path / "token", **extra)


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
    assert await client.find_asset_event(asset_id, "nobody", "nothing") is None
    assert await client.find_asset_event(asset_id, "nobody", "nothing") is None
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
    client._token, client._refresh_at = expired, time.time() + 3600

    assert await client.asset_id(APPS) > 0

    assert calls == [("test", "get_assets", "401"), ("test", "token", "201"), ("test", "get_assets", "200")]


async def test_token_past_its_exp_is_reminted_before_use(
    live: AirflowServer, client: AirflowClient, calls: Calls
) -> None:
    client._token, client._refresh_at = expired_jwt(live.jwt_secret), 0.0

    await client.asset_id(APPS)

    assert calls == [("test", "token", "201"), ("test", "get_assets", "200")]


async def test_token_signed_with_another_secret_is_reminted(
    live: AirflowServer, client: AirflowClient, calls: Calls
) -> None:
    client._token, client._refresh_at = expired_jwt("a secret Airflow no longer uses"), time.time() + 3600

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
    client = AirflowClient("test", login_instance(live.url, tmp_path, password="wrong-pa55word"))
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


async def test_asset_event_reaches_the_consumer_and_can_be_found(
    live: AirflowServer, client: AirflowClient
) -> None:
    delivery = uuid.uuid4().hex
    asset_id = await client.asset_id(APPS)
    extra = {"fluxback_delivery": delivery, "revision": "main@sha1:abc1234"}

    event_id = await client.create_asset_event(asset_id, extra)

    assert await client.find_asset_event(asset_id, "fluxback_delivery", delivery) == event_id
    assert await client.find_asset_event(asset_id, "fluxback_delivery", "another delivery") is None
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


async def test_connection_refused_is_temporary(tmp_path: Path, calls: Calls) -> None:
    client = AirflowClient(
        "down", login_instance(f"http://127.0.0.1:{free_port()}", tmp_path), on_request=recorder(calls)
    )
    try:
        with pytest.raises(TemporaryAirflowError) as raised:
            await client.trigger_dag_run(POST_DEPLOY, new_run_id("x"), {})
        assert await client.health() is False
    finally:
        await client.close()
    assert raised.value.status is None
    assert "unreachable" in raised.value.reason
    assert calls == [("down", "token", "error"), ("down", "health", "error")]


FakeAnswers = list[web.Response | None]


@pytest.fixture
async def fake_airflow() -> AsyncIterator[tuple[str, FakeAnswers]]:
    """A local server answering `/api/v2/*` with the queued responses in order; None never answers."""
    answers: FakeAnswers = []
    released = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        answer = answers.pop(0)
        if answer is None:
            await released.wait()
            return web.Response(status=504)
        return answer

    app = web.Application()
    app.router.add_route("*", "/api/v2/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", answers
    released.set()
    await runner.cleanup()


@pytest.fixture
async def fake_client(fake_airflow: tuple[str, FakeAnswers], tmp_path: Path) -> AsyncIterator[AirflowClient]:
    client = AirflowClient("fake", token_instance(fake_airflow[0], tmp_path, "token", timeout_seconds=0.5))
    yield client
    await client.close()


async def test_429_and_5xx_are_temporary_with_retry_after(
    fake_airflow: tuple[str, FakeAnswers], fake_client: AirflowClient
) -> None:
    _, answers = fake_airflow
    answers += [
        web.json_response({"detail": "slow down"}, status=429, headers={"Retry-After": "7"}),
        web.Response(
            status=503, text="<html>busy</html>", headers={"Retry-After": formatdate(time.time() + 30)}
        ),
        web.json_response({"detail": {"reason": "Database error", "message": "see ID x1"}}, status=500),
    ]
    raised = []
    for _ in range(3):
        with pytest.raises(TemporaryAirflowError) as error:
            await fake_client.find_asset_event(1, "k", "v")
        raised.append(error.value)

    assert (raised[0].status, raised[0].retry_after) == (429, 7.0)
    assert "slow down" in raised[0].reason
    assert raised[1].status == 503
    assert raised[1].retry_after is not None
    assert 20 < raised[1].retry_after <= 30
    assert "<html>busy</html>" in raised[1].reason
    assert (raised[2].status, raised[2].retry_after) == (500, None)
    assert "Database error: see ID x1" in raised[2].reason


async def test_validation_errors_are_permanent_and_summarised(
    fake_airflow: tuple[str, FakeAnswers], fake_client: AirflowClient
) -> None:
    detail = [
        {"type": "missing", "loc": ["body", "logical_date"], "msg": "Field required", "input": {"x": 1}}
    ]
    fake_airflow[1].append(web.json_response({"detail": detail}, status=422))
    with pytest.raises(PermanentAirflowError) as raised:
        await fake_client.trigger_dag_run(POST_DEPLOY, "run", {})
    assert raised.value.status == 422
    assert raised.value.reason == (
        f"Airflow 422: trigger dag {POST_DEPLOY} run run: body.logical_date: Field required"
    )


async def test_timeout_is_temporary(
    fake_airflow: tuple[str, FakeAnswers], fake_client: AirflowClient
) -> None:
    fake_airflow[1].append(None)
    with pytest.raises(TemporaryAirflowError, match=r"did not answer within 0\.5 s") as raised:
        await fake_client.find_asset_event(1, "k", "v")
    assert raised.value.status is None


# -- configuration --------------------------------------------------------------------------------


@pytest.fixture
def two_instances(tmp_path: Path) -> AirflowConfig:
    return AirflowConfig(
        instances={
            "default": token_instance("http://127.0.0.1:1", tmp_path, "t"),
            "prod": token_instance("http://127.0.0.1:2", tmp_path, "t"),
        }
    )


async def test_clients_by_instance_name(two_instances: AirflowConfig) -> None:
    clients = AirflowClients.from_config(two_instances)
    try:
        assert clients.get("prod").name == "prod"
        with pytest.raises(
            PermanentAirflowError, match=r"no Airflow instance named 'staging'.*default, prod"
        ):
            clients.get("staging")
    finally:
        await clients.close()
