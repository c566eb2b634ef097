"""Watch logic kmock cannot show (it has no resourceVersion): 410 Gone, bookmarks, leader-only re-lists.

Against `FakeApiServer` over real HTTP with the real kubernetes_asyncio client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestServer
from kubernetes_asyncio.client import ApiClient, Configuration, CustomObjectsApi

from receiver.kube.kinds import KUSTOMIZATION, FluxKind
from receiver.kube.watch import KindWatch
from receiver.metrics import Metrics
from tests.kube_cluster import applied, eventually, kustomization
from tests.unit.fake_apiserver import FakeApiServer


class Seen:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    async def __call__(self, kind: FluxKind, change: str, obj: Mapping[str, Any]) -> None:
        revision = obj.get("status", {}).get("lastAppliedRevision", "")
        self.changes.append((change, obj["metadata"]["name"], revision))


@asynccontextmanager
async def watching(
    resync: float, is_leader: Callable[[], bool] = lambda: True
) -> AsyncIterator[tuple[FakeApiServer, Seen, Metrics]]:
    fake = FakeApiServer(KUSTOMIZATION.group, KUSTOMIZATION.version, KUSTOMIZATION.plural)
    await fake.put("apps", kustomization("apps", status=applied("main@sha1:" + "1" * 40)))
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    seen, metrics = Seen(), Metrics()
    client = ApiClient(Configuration(host=str(server.make_url("")).rstrip("/")))
    watch = KindWatch(
        CustomObjectsApi(client),
        KUSTOMIZATION,
        None,
        seen,
        metrics,
        resync_seconds=resync,
        is_leader=is_leader,
    )
    task = asyncio.create_task(watch.run())
    try:
        yield fake, seen, metrics
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await server.close()


def lists(fake: FakeApiServer) -> int:
    return sum(1 for query in fake.requests if "watch" not in query)


async def test_a_compacted_watch_gets_410_and_the_re_list_finds_what_it_missed() -> None:
    async with watching(resync=300) as (fake, seen, metrics):
        await eventually(lambda: len(fake.requests) == 2)  # the list, then a watch from its version
        missed = "main@sha1:" + "2" * 40
        await fake.put("apps", kustomization("apps", status=applied(missed)), announce=False)
        await fake.compact()
        await eventually(lambda: ("LISTED", "apps", missed) in seen.changes)
        assert seen.changes[0] == ("LISTED", "apps", "main@sha1:" + "1" * 40)
        assert lists(fake) == 2
        assert (
            metrics.registry.get_sample_value("fluxback_watch_restarts_total", {"kind": "Kustomization"}) == 1
        )


async def test_a_bookmark_moves_the_version_the_next_watch_starts_from() -> None:
    async with watching(resync=300) as (fake, seen, _):
        await eventually(lambda: len(fake.requests) == 2)  # the list at version 2, then a watch from it
        fake.bookmark_next_watch = True
        await fake.end_watches()
        await eventually(lambda: len(fake.requests) == 4)  # a watch answered with a bookmark, then the next
        assert fake.requests[2]["resourceVersion"] == "2"
        assert fake.requests[3]["resourceVersion"] == "3"  # the bookmark's version, with no re-list
        assert lists(fake) == 1
        assert [change for change, _, _ in seen.changes] == ["LISTED"]


async def test_full_re_lists_run_only_on_the_leader() -> None:
    async with watching(resync=1, is_leader=lambda: False) as (fake, _, _):
        await asyncio.sleep(2.5)
        assert lists(fake) == 1  # the start-up list only; watches continue from their version
    async with watching(resync=1) as (fake, _, _):
        await eventually(lambda: lists(fake) >= 3)
