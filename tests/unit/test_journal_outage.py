"""PostgreSQL stopped for 30 s while events keep arriving, through the real app and worker.

During the outage every event is answered `503` with `Retry-After` (Flux retries), `/readyz`
fails and nothing is written; once PostgreSQL is back, the test re-sends what got 503 (as Flux
would) and every event that was ever answered `202` is processed to the end, once (the few
whose outcome the outage kept from being written are resolved again, and say why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.journal import DeliveryState
from receiver.journal.postgres import PostgresJournal
from receiver.metrics import Metrics
from receiver.secrets import FileSecret
from receiver.service import worker_service
from tests.flux_replay import event_body
from tests.helpers import Service, make_config, running
from tests.postgres_server import PASSWORD, PostgresServer, running_server

OUTAGE_SECONDS = 30.0


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    """A PostgreSQL of its own: this test stops and starts it."""
    with running_server("outage", durable=True) as server:
        yield server


async def _post(service: Service, body: bytes) -> tuple[int, dict[str, str], int | None]:
    status, answer, headers = await service.post_event(body)
    return status, headers, int(answer["id"]) if status == 202 else None


async def test_postgresql_down_for_30_s_loses_nothing_and_repeats_nothing(
    server: PostgresServer, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    journal = PostgresJournal(
        server.url("outage"), password_file=FileSecret(password), leader_retry_seconds=1
    )
    await journal.open()
    config = make_config(tmp_path, worker={"poll_interval_seconds": 0.5})
    metrics = Metrics()
    accepted: dict[bytes, int] = {}
    refused: list[bytes] = []
    bodies = iter(event_body(name=f"app-{i % 7}", revision=None, message=f"event {i}") for i in range(10_000))
    try:
        async with running(
            config, journal, metrics=metrics, background=[worker_service(config, journal, metrics)]
        ) as service:
            for _ in range(20):
                body = next(bodies)
                status, _, delivery_id = await _post(service, body)
                assert status == 202 and delivery_id is not None
                accepted[body] = delivery_id

            server.stop()
            readiness: list[int] = []
            ends = time.monotonic() + OUTAGE_SECONDS
            while time.monotonic() < ends:
                body = next(bodies)
                status, headers, _ = await _post(service, body)
                assert status == 503, status
                assert int(headers["Retry-After"]) > 0
                refused.append(body)
                readiness.append((await service.get("/readyz"))[0])
                await asyncio.sleep(0.5)
            assert readiness and set(readiness) == {503}

            server.start()
            for body in refused:  # Flux retries what got 503
                for _ in range(100):
                    status, _, delivery_id = await _post(service, body)
                    if status == 202:
                        break
                    await asyncio.sleep(0.2)
                assert status == 202 and delivery_id is not None
                accepted[body] = delivery_id
            assert (await service.get("/readyz"))[0] == 200

            for _ in range(600):
                if (await journal.depth())[DeliveryState.DONE] == len(accepted):
                    break
                await asyncio.sleep(0.1)
        depth = await journal.depth()
        assert (
            depth[DeliveryState.DONE] == sum(depth.values()) == len(accepted) == len(set(accepted.values()))
        )
        for delivery_id in accepted.values():
            delivery = await journal.get(delivery_id)
            assert delivery is not None and delivery.state is DeliveryState.DONE
            resolved = [d.text for d in delivery.decisions if "only rules apply" in d.text]
            if len(resolved) != 1:
                # Only work whose outcome could not be written when PostgreSQL went away is taken up
                # again (its actions, had it any, are fenced by their records), and it says so.
                assert len(resolved) == 2 and "journal was unavailable" in (delivery.last_error or "")
    finally:
        await journal.close()
