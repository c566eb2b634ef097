"""Two `fluxback serve` replicas on one PostgreSQL journal and a real Airflow: every accepted event is
acted on exactly once, also when one replica is killed with SIGKILL in the middle of its deliveries
and started again.

The witness is Airflow's list of asset events: Airflow has no idempotency key for them, so an action
performed twice is a second event there. The journal's action records are counted as well.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from receiver.actions import ASSET_KEY_FIELD
from receiver.assets import flux_object_uri
from tests.conftest import PostgresDatabase
from tests.flux_replay import event_body, post_event
from tests.gitops import GitOpsRepo
from tests.integration.airflow_harness import AirflowServer
from tests.integration.fluxback_service import HMAC_KEY, FluxbackService, fluxback_config, kustomization

pytestmark = pytest.mark.integration

OBJECTS = 25
"""Kustomizations replica-00 ... replica-24; tests/integration/dags/fluxback_replica_assets.py makes
their assets exist in Airflow."""
ROUNDS = 12
"""Commits, each changing every object's path: one success event per object and commit, 300 in all."""
NAMES = tuple(f"replica-{index:02d}" for index in range(OBJECTS))
ASSET_DAG = "fluxback_replica_assets"
CLUSTER = "test"
UNFINISHED = ("received", "resolving", "acting", "failed")


def asset_uri(name: str) -> str:
    return flux_object_uri(CLUSTER, "Kustomization", "flux-system", name)


def action_key(name: str, sha: str) -> str:
    """The idempotency key Fluxback gives the object asset event of `name` at commit `sha`."""
    return f"asset:default:{asset_uri(name)}:Kustomization/flux-system/{name}:{sha}:success"


@dataclass
class Journal:
    """The test's own view of the shared PostgreSQL journal (superuser, over the unix socket)."""

    database: PostgresDatabase

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        name = self.database.url.rsplit("/", 1)[1]
        with self.database.server.admin(name) as db:
            return list(db.execute(sql.encode(), params).fetchall())

    async def count(self, sql: str, params: Sequence[Any] = ()) -> int:
        [(value,)] = await asyncio.to_thread(self.rows, sql, params)
        return int(value)


@dataclass
class Stream:
    """The events posted so far: delivery id -> the action key it must produce."""

    accepted: dict[int, str] = field(default_factory=dict)
    halfway: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def gitops(tmp_path: Path) -> GitOpsRepo:
    return GitOpsRepo(tmp_path / "git")


@pytest.fixture
def replicas(
    tmp_path: Path, airflow: AirflowServer, gitops: GitOpsRepo, postgres: PostgresDatabase
) -> Iterator[tuple[FluxbackService, FluxbackService]]:
    """Two replicas with one config but their own port and git cache, both running."""
    airflow.wait_for_dags(ASSET_DAG, timeout=90, unpause=False)
    services = []
    for letter in "ab":
        root = tmp_path / f"fluxback-{letter}"
        config = fluxback_config(
            root,
            airflow=airflow,
            repo=gitops,
            rules=[{"match": {"name": "replica-*", "outcome": "success"}, "object_asset": True}],
        )
        config["journal"] = postgres.url
        config["journal_password_file"] = str(postgres.password_file)
        config["git"]["objects"] = [kustomization(name) for name in NAMES]
        services.append(FluxbackService(root, config))
    try:
        for service in services:
            service.start(timeout=60)
        yield services[0], services[1]
    finally:
        for service in services:
            service.stop()


async def post_until_accepted(session: aiohttp.ClientSession, service: FluxbackService, body: bytes) -> int:
    """POST like Flux until the 202: a replica that is down or starting is tried again, as Flux retries."""
    deadline = time.monotonic() + 120
    while True:
        try:
            status, answer = await post_event(session, f"{service.url}/flux/events", body, hmac_key=HMAC_KEY)
        except aiohttp.ClientError as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            if status == 202:
                return int(answer["id"])
            assert status == 503, (status, answer)
            problem = f"{status} {answer}"
        if time.monotonic() > deadline:
            raise AssertionError(f"{service.url} did not accept an event within 120 s: {problem}")
        await asyncio.sleep(0.2)


async def post_rounds(
    replicas: tuple[FluxbackService, FluxbackService], shas: Sequence[str], stream: Stream
) -> None:
    """Each commit's events for every object at once, to the replicas in turn; a round waits for its
    202s, so each object's events arrive in commit order."""
    async with aiohttp.ClientSession() as session:
        for number, sha in enumerate(shas):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            posts = [
                post_until_accepted(
                    session,
                    replicas[(index + number) % 2],
                    event_body(name=name, revision=GitOpsRepo.revision(sha), timestamp=stamp),
                )
                for index, name in enumerate(NAMES)
            ]
            for name, delivery_id in zip(NAMES, await asyncio.gather(*posts), strict=True):
                stream.accepted[delivery_id] = action_key(name, sha)
            if number + 1 == len(shas) // 2:
                stream.halfway.set()
            await asyncio.sleep(0.3)  # a fleet reports over seconds, not in one burst


async def asset_events_acted(service: FluxbackService) -> float:
    """The asset event actions the replica has finished, from its /metrics."""
    families = text_string_to_metric_families(await service.metrics_text())
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "fluxback_actions_total" and sample.labels.get("kind") == "asset_event"
    )


async def kill_while_working(service: FluxbackService, journal: Journal) -> int:
    """SIGKILL the replica once it is past its warm-up (it has acted) and holds claims on several
    objects; returns how many heads it held when it died."""
    assert service.process is not None
    owner = f"{socket.gethostname()}:{service.process.pid}:"
    held = "SELECT count(*) FROM object_heads WHERE starts_with(owner, %s)"
    deadline = time.monotonic() + 90
    while await asset_events_acted(service) < 10 or await journal.count(held, (owner,)) < 2:
        assert time.monotonic() < deadline, "replica a never acted and held two claims at once"
        await asyncio.sleep(0.02)
    service.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(service.process.wait)
    # Nobody may take these over before their lease runs out, so this is what it held at its death.
    return await journal.count(held, (owner,))


async def wait_drained(journal: Journal, accepted: int, replicas: Sequence[FluxbackService]) -> None:
    states = ", ".join(f"'{state}'" for state in UNFINISHED)
    unfinished = f"SELECT count(*) FROM deliveries WHERE state IN ({states})"  # noqa: S608
    deadline = time.monotonic() + 240
    while (left := await journal.count(unfinished)) or await journal.count(
        "SELECT count(*) FROM deliveries"
    ) < accepted:
        if time.monotonic() > deadline:
            logs = "\n".join(f"----- {s.url}\n{s.log_tail(40)}" for s in replicas)
            raise AssertionError(f"{left} deliveries still unfinished after 240 s\n{logs}")
        await asyncio.sleep(0.5)


def asset_events(airflow: AirflowServer, asset_id: int) -> list[dict[str, Any]]:
    """Every event of the asset, page by page."""
    events: list[dict[str, Any]] = []
    while True:
        page = airflow.api(
            "GET", "/assets/events", params={"asset_id": asset_id, "limit": 100, "offset": len(events)}
        )
        events += page["asset_events"]
        if not page["asset_events"] or len(events) >= page["total_entries"]:
            return events


def asset_event_keys(airflow: AirflowServer, shas: Sequence[str]) -> list[str]:
    """The action key of every event in the objects' assets for these commits, repeats included."""
    assets = airflow.api("GET", "/assets", params={"uri_pattern": "replica-", "limit": 100})["assets"]
    ids = {asset["uri"]: asset["id"] for asset in assets}
    return [
        event["extra"].get(ASSET_KEY_FIELD)
        for name in NAMES
        for event in asset_events(airflow, ids[asset_uri(name)])
        if event["extra"].get("commit") in shas
    ]


async def test_every_accepted_event_is_acted_on_once_across_a_replica_killed_mid_delivery(
    airflow: AirflowServer,
    gitops: GitOpsRepo,
    postgres: PostgresDatabase,
    replicas: tuple[FluxbackService, FluxbackService],
) -> None:
    """Airflow keeps its metadata on the session's PostgreSQL, as Airflow requires in production. On
    SQLite, which takes one writer at a time, the eight concurrent asset event POSTs of two replicas
    waited past Fluxback's 5 s timeout: after 4 minutes a sixth of the 300 events was acted on.

    A timed-out POST may still create its event later, and a replica killed between its POST and
    recording the result leaves the same doubt; either way the retry looks the event up by its key
    before creating it, which the count in Airflow holds Fluxback to."""
    journal = Journal(postgres)
    shas = [
        gitops.commit({f"{name}/config.yaml": f"round: {number}\n" for name in NAMES}, f"round {number}")
        for number in range(ROUNDS)
    ]
    stream = Stream()
    posting = asyncio.create_task(post_rounds(replicas, shas, stream))
    await asyncio.wait_for(stream.halfway.wait(), timeout=120)

    held_at_death = await kill_while_working(replicas[0], journal)
    assert held_at_death >= 1, "the kill must interrupt deliveries in progress"
    await asyncio.to_thread(replicas[0].start, 60)
    await posting
    await wait_drained(journal, len(stream.accepted), replicas)

    assert len(stream.accepted) == OBJECTS * ROUNDS
    states = dict(await asyncio.to_thread(journal.rows, "SELECT id, state FROM deliveries"))
    assert states == dict.fromkeys(stream.accepted, "done")
    actions = await asyncio.to_thread(journal.rows, "SELECT key, delivery_id, kind, state FROM actions")
    assert sorted((key, delivery_id) for key, delivery_id, _, _ in actions) == sorted(
        (key, delivery_id) for delivery_id, key in stream.accepted.items()
    )
    assert {(kind, state in ("done", "already")) for _, _, kind, state in actions} == {("asset_event", True)}
    taken_over = "SELECT count(*) FROM decisions WHERE text LIKE 'taken over from replica %%'"
    assert await journal.count(taken_over) >= held_at_death

    assert Counter(await asyncio.to_thread(asset_event_keys, airflow, shas)) == Counter(
        stream.accepted.values()
    )
