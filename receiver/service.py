"""The background services `fluxback serve` runs next to the HTTP server.

The worker (with its git mirrors and Airflow clients) and journal retention
each run as a supervised task: an unexpected crash is logged and the task is
started again after a pause, so one bad moment never silently stops the
processing of accepted events. Retention is singleton work: it runs only on
the replica that leads (`journal.leadership()`), which the `fluxback_leader`
gauge shows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog

from receiver.actions import Actor
from receiver.airflow import AirflowClients
from receiver.app import Background
from receiver.config import Config
from receiver.git import Mirrors, ObjectLocator
from receiver.journal import Journal, while_leading
from receiver.metrics import Metrics
from receiver.pipeline import Observer, Pipeline
from receiver.readiness import ReadinessChecks
from receiver.resolve import Resolver
from receiver.retention import prune_forever
from receiver.rules import Policy
from receiver.worker import Worker

log = structlog.get_logger(__name__)

RESTART_PAUSE_SECONDS = 5.0


async def _supervise(name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("service.crashed", service=name, restart_in=RESTART_PAUSE_SECONDS)
            await asyncio.sleep(RESTART_PAUSE_SECONDS)


@asynccontextmanager
async def _running(name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    task = asyncio.create_task(_supervise(name, run), name=name)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def worker_service(
    config: Config,
    journal: Journal,
    metrics: Metrics,
    *,
    locator: ObjectLocator | None = None,
    observers: Sequence[Observer] = (),
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[None]:
    """The worker with its git mirrors and Airflow clients, closed when it stops.

    Args:
        locator: what the cluster says about each Flux object's repository (Kubernetes enabled).
        observers: told of every action, refusal and dead letter (receiver/pipeline.py).
        clock: the worker's time in epoch seconds, and `sleep` its way to wait (tests pass faster ones).
    """
    airflow = AirflowClients.from_config(
        config.airflow,
        on_request=lambda instance, method, status, seconds: metrics.airflow_request.labels(
            instance, method, status
        ).observe(seconds),
    )
    pipeline = _pipeline(config, journal, metrics, airflow, locator=locator, observers=observers)
    worker = Worker(
        journal=journal, pipeline=pipeline, config=config.worker, metrics=metrics, clock=clock, sleep=sleep
    )
    for obj in config.git.objects:
        metrics.track_object(obj.kind, obj.namespace, obj.name)
    try:
        async with _running("worker", worker.run):
            yield
    finally:
        await airflow.close()


def _pipeline(
    config: Config,
    journal: Journal,
    metrics: Metrics,
    airflow: AirflowClients,
    *,
    locator: ObjectLocator | None,
    observers: Sequence[Observer],
) -> Pipeline:
    """What the worker runs on each delivery: resolve it through the git mirrors and the policy,
    then act on Airflow."""
    mirrors = Mirrors(
        config.git,
        on_fetch=lambda repository, result: metrics.git_fetches.labels(repository, result).inc(),
        locator=locator,
    )
    resolver = Resolver(
        journal=journal,
        mirrors=mirrors,
        policy=Policy(config.policy),
        default_instance=config.airflow.default_instance,
    )
    return Pipeline(
        config=config,
        journal=journal,
        resolver=resolver,
        actor=Actor(journal, airflow, metrics),
        metrics=metrics,
        observers=observers,
    )


def background_services(
    config: Config, journal: Journal, metrics: Metrics, readiness: ReadinessChecks
) -> Sequence[Background]:
    """What `serve` starts next to the HTTP server."""
    leadership = journal.leadership()
    leadership.on_change(lambda leading: metrics.leader.set(int(leading)))
    retention = _running(
        "retention", lambda: while_leading(leadership, lambda: prune_forever(journal, config.retention))
    )
    if not config.kubernetes.enabled:
        return [worker_service(config, journal, metrics), retention]
    # Imported here: the Kubernetes client's models take about 45 MB that a service without
    # Kubernetes should not carry.
    from receiver.kube import Cluster, KubernetesEvents

    cluster = Cluster(config.kubernetes, journal, metrics, is_leader=lambda: leadership.is_leader)
    readiness.add(cluster.problems)
    events = [KubernetesEvents(cluster.recorder)] if cluster.recorder is not None else []
    return [
        worker_service(config, journal, metrics, locator=cluster.discovery, observers=events),
        retention,
        _running("kubernetes", cluster.run),
    ]
