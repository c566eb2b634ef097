"""receiver.airflow against a tiny local server: the failures a real Airflow cannot be made to show
(refused connections, 429 and 5xx with Retry-After, validation errors, timeouts), and instance lookup.
The calls themselves are tested against a real Airflow in tests/integration/test_airflow_client.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

import pytest
from aiohttp import web

from receiver.airflow import AirflowClient, AirflowClients, PermanentAirflowError, TemporaryAirflowError
from receiver.config import AirflowConfig
from tests.helpers import Calls, free_port, login_instance, recorder, token_instance

POST_DEPLOY = "post_deploy"
SINCE = datetime(2026, 12, 1, tzinfo=UTC)


async def test_connection_refused_is_temporary(tmp_path: Path) -> None:
    calls: Calls = []
    client = AirflowClient(
        "down",
        login_instance(f"http://127.0.0.1:{free_port()}", tmp_path, "admin", "password"),
        on_request=recorder(calls),
    )
    try:
        with pytest.raises(TemporaryAirflowError) as raised:
            await client.trigger_dag_run(POST_DEPLOY, "run", {})
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
            await fake_client.find_asset_event(1, "k", "v", SINCE)
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
        await fake_client.find_asset_event(1, "k", "v", SINCE)
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
