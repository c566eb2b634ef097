"""The worker without Airflow: retries, dead letters, replay and the decisions it records,
driven through the real app, a real journal and a real git repository."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from receiver.actions import Action, Actor, Performed
from receiver.airflow import AirflowClients
from receiver.app import Background
from receiver.config import Config, WorkerConfig
from receiver.errors import PermanentError
from receiver.git import Mirrors
from receiver.journal import ActionState, Correlation, Delivery, DeliveryState, Journal, JournalUnavailable
from receiver.journal.sqlite import SqliteJournal
from receiver.metrics import Metrics
from receiver.pipeline import Observer, Pipeline
from receiver.plan import trigger_run_id
from receiver.resolve import Resolution, Resolver
from receiver.rules import EventFacts, Policy
from receiver.service import worker_service
from receiver.worker import Worker, retry_delay
from tests.flux_replay import event_body
from tests.gitops import GitOpsRepo, ssh_signing_key
from tests.helpers import Service, free_port, make_config, running, write_secret

AIRFLOW_RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+-]+$")


def worker_config(
    tmp_path: Path, repo: GitOpsRepo, allowed_signers: Path | None = None, **worker: Any
) -> Config:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    return make_config(
        tmp_path,
        git={
            "cache_dir": str(tmp_path / "git-cache"),
            "repositories": [
                {"name": "flux-system/flux-system", "url": repo.url}
                | ({"allowed_signers_file": str(allowed_signers)} if allowed_signers else {})
            ],
            "objects": [
                {
                    "kind": "Kustomization",
                    "namespace": "flux-system",
                    "name": "apps",
                    "repository": "flux-system/flux-system",
                    "path": "./apps",
                },
            ],
        },
        airflow={
            "instances": {
                "default": {
                    "url": f"http://127.0.0.1:{free_port()}",  # an Airflow that is down
                    "token_file": str(write_secret(secrets / "airflow-token", b"token")),
                    "timeout_seconds": 1,
                }
            }
        },
        policy=[{"match": {"name": "apps"}, "dags": ["deploy"]}],
        worker=worker,
    )


class FastClock:
    """The worker's time, running SPEEDUP times faster than the wall clock while it waits.

    Retry delays keep their real size (5 s, then 10 s, ...) and become due after the idle
    polls that cover them, without a test waiting that long.
    """

    SPEEDUP = 200.0

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(seconds / self.SPEEDUP)


def fast_worker(
    config: Config, journal: Journal, metrics: Metrics, observers: Sequence[Observer] = ()
) -> Background:
    clock = FastClock()
    return worker_service(config, journal, metrics, observers=observers, clock=clock.time, sleep=clock.sleep)


@dataclass
class RecordingObserver:
    """Writes down what the pipeline tells its observers."""

    seen: list[tuple[str, ...]] = field(default_factory=list)

    async def performed(self, delivery: Delivery, action: Action, result: Performed) -> None:
        self.seen.append(("performed", action.key, result.state.value))

    async def refused(self, delivery: Delivery, correlation: Correlation) -> None:
        self.seen.append(("refused", correlation.commit, correlation.verdict))

    async def dead(self, delivery: Delivery, reason: str) -> None:
        self.seen.append(("dead", str(delivery.id), reason))


class BrokenObserver:
    """An observer with a bug in every method."""

    async def performed(self, delivery: Delivery, action: Action, result: Performed) -> None:
        raise RuntimeError("observer bug")

    async def refused(self, delivery: Delivery, correlation: Correlation) -> None:
        raise RuntimeError("observer bug")

    async def dead(self, delivery: Delivery, reason: str) -> None:
        raise RuntimeError("observer bug")


def dead_letters(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("fluxback_dead_letters_total")


async def until_state(service: Service, delivery_id: int, *states: str) -> dict[str, Any]:
    for _ in range(400):
        status, delivery = await service.get(f"/deliveries/{delivery_id}")
        assert status == 200
        if delivery["state"] in states:
            return dict(delivery)
        await asyncio.sleep(0.05)
    raise AssertionError(f"delivery {delivery_id} stayed {delivery['state']}: {delivery}")


async def until(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true within 2 s")


async def post(service: Service, sha: str | None, **event: Any) -> int:
    body = event_body(revision=None if sha is None else f"main@sha1:{sha}", **event)
    status, answer, _ = await service.post_event(body)
    assert status == 202, answer
    return int(answer["id"])


def test_retry_delay_grows_with_jitter_and_honours_retry_after() -> None:
    config = WorkerConfig(retry_initial_seconds=5, retry_max_seconds=60)
    rng = random.Random(7)
    delays = [retry_delay(attempt, config, None, rng) for attempt in range(1, 8)]
    assert all(2.5 <= d <= 60 for d in delays)
    assert delays[0] <= 5 < delays[3]
    assert max(delays) <= 60 and delays[-1] >= 30
    assert retry_delay(1, config, 120.0, rng) == 120.0


def test_trigger_run_ids_are_deterministic_and_valid_for_airflow() -> None:
    args = ("Kustomization/flux-system/apps", "main@sha1:" + "a" * 40, "success", "post_deploy", "a" * 40)
    run_id = trigger_run_id(*args)
    assert run_id == trigger_run_id(*args)
    assert AIRFLOW_RUN_ID.fullmatch(run_id)
    assert run_id != trigger_run_id(*args[:2], "failure", *args[3:])
    assert run_id != trigger_run_id(*args[:3], "other_dag", args[4])
    assert AIRFLOW_RUN_ID.fullmatch(
        trigger_run_id("HelmRelease/ns/we!rd name", "1.2.3+abc", "success", "d", None)
    )


async def test_airflow_down_retries_then_dead_letters_then_replays(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    trailers = {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"}
    sha = repo.commit({"apps/a.yaml": "a: 1\n"}, "deploy", trailers)
    config = worker_config(tmp_path, repo, max_attempts=3)
    metrics = Metrics()
    observer = RecordingObserver()
    async with running(
        config, journal, metrics=metrics, background=[fast_worker(config, journal, metrics, [observer])]
    ) as service:
        delivery_id = await post(service, sha)
        dead = await until_state(service, delivery_id, "dead")
        assert dead["attempts"] == 3
        texts = [d["text"] for d in dead["decisions"]]
        waits = [int(wait) for text in texts for wait in re.findall(r"retry in (\d+)s", text)]
        assert len(waits) == 2 and 2 <= waits[0] <= 5 <= waits[1] <= 10  # the configured backoff
        assert "dead letter after 3 attempt(s)" in texts[-1]
        assert dead["correlations"][0]["verdict"] == "authored by deploy run r1"
        await until(lambda: len(observer.seen) == 1)  # told last, after the state is written
        assert observer.seen == [("dead", str(delivery_id), dead["last_error"])]
        assert dead_letters(metrics) == 1

        replayed = await journal.replay([delivery_id], datetime.now(UTC))
        assert replayed == [delivery_id]
        again = await until_state(service, delivery_id, "dead")
        assert "replay requested by an operator" in " ".join(d["text"] for d in again["decisions"])
        await until(lambda: len(observer.seen) == 2)
        assert dead_letters(metrics) == 2


async def test_decisions_for_events_with_nothing_to_do(tmp_path: Path, journal: SqliteJournal) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    plain = repo.commit({"apps/a.yaml": "a: 1\n"}, "no trailers here")
    config = worker_config(tmp_path, repo)
    metrics = Metrics()
    async with running(
        config, journal, metrics=metrics, background=[fast_worker(config, journal, metrics)]
    ) as service:
        progress = await post(service, plain, reason="Progressing", message="Deployment/a/b configured")
        unmapped = await post(service, plain, name="other")
        no_commit = await post(service, None, name="apps", reason="ReconciliationSucceeded")
        untagged = await post(service, plain)
        heartbeat = await post(service, plain, message="Reconciliation finished in 9.9s, next run in 10m0s")

        def texts(delivery: dict[str, Any]) -> str:
            return " | ".join(d["text"] for d in delivery["decisions"])

        assert "nothing to act on" in texts(await until_state(service, progress, "done"))
        assert "no git repository configured" in texts(await until_state(service, unmapped, "done"))
        assert "no commit in revision" in texts(await until_state(service, no_commit, "done"))
        first = await until_state(service, untagged, "done")
        assert "first event for this object" in texts(first)
        assert first["correlations"][0]["verdict"] == "commit has no Airflow trailers"
        assert (await until_state(service, heartbeat, "done"))["duplicate_of"] == untagged
        assert (await journal.object_state("Kustomization/flux-system/apps")).last_applied == plain


async def test_trailers_of_commits_without_an_accepted_signature_are_ignored(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    key, line = ssh_signing_key(tmp_path / "keys", "release-bot")
    (tmp_path / "allowed_signers").write_text(line)
    trailers = {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"}
    config = worker_config(tmp_path, repo, allowed_signers=tmp_path / "allowed_signers")
    metrics = Metrics()
    async with running(
        config, journal, metrics=metrics, background=[fast_worker(config, journal, metrics)]
    ) as service:
        unsigned = repo.commit({"apps/a.yaml": "a: 1\n"}, "forged deploy", trailers)
        refused = await until_state(service, await post(service, unsigned), "done")
        assert refused["actions"] == []
        assert refused["correlations"][0]["verdict"] == (
            "signature not accepted, trailers ignored: commit has no signature"
        )

        signed = repo.commit({"apps/a.yaml": "a: 2\n"}, "real deploy", trailers, signing_key=key)
        accepted = await until_state(service, await post(service, signed), "failed", "dead")
        assert accepted["correlations"][-1]["verdict"] == "authored by deploy run r1"
        assert accepted["last_error"] is not None and "Airflow" in accepted["last_error"]


class FlakyJournal(SqliteJournal):
    """A real journal whose disk refuses the first write of a final state (e.g. briefly full)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refusals = 1

    async def set_state(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        next_attempt_at: datetime | None = None,
        error: str | None = None,
        decision: str | None = None,
    ) -> None:
        if state is DeliveryState.DONE and self.refusals:
            self.refusals -= 1
            raise JournalUnavailable("journal cannot commit: disk I/O error")
        await super().set_state(
            delivery_id, state, next_attempt_at=next_attempt_at, error=error, decision=decision
        )


async def test_an_outcome_the_journal_could_not_write_is_taken_up_again(tmp_path: Path) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    sha = repo.commit({"apps/a.yaml": "a: 1\n"}, "plain")
    config = worker_config(tmp_path, repo)
    journal = FlakyJournal(tmp_path / "flaky.db")
    await journal.open()
    metrics = Metrics()
    try:
        async with running(
            config, journal, metrics=metrics, background=[fast_worker(config, journal, metrics)]
        ) as service:
            first = await post(service, sha)
            done = await until_state(service, first, "done")
            later = await until_state(
                service, await post(service, sha, name="apps", reason="Progressing"), "done"
            )
    finally:
        await journal.close()
    assert journal.refusals == 0
    assert done["attempts"] == 2
    assert "journal was unavailable" in (done["last_error"] or "")
    assert later["state"] == "done"  # the object was not held back


async def test_a_metadata_commit_outside_the_applied_revision_is_not_trusted(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    applied = repo.commit({"apps/a.yaml": "a: 1\n"}, "what Flux applied")
    side = repo.side_branch_commit(
        "elsewhere",
        {"apps/a.yaml": "a: 666\n"},
        "never applied",
        {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "x"},
    )
    config = worker_config(tmp_path, repo)
    metrics = Metrics()
    async with running(
        config, journal, metrics=metrics, background=[fast_worker(config, journal, metrics)]
    ) as service:
        delivery_id = await post(service, applied, metadata={"commit": side})
        delivery = await until_state(service, delivery_id, "done")
    texts = [d["text"] for d in delivery["decisions"]]
    assert any(f"metadata commit {side[:12]} is not part of the applied revision" in t for t in texts)
    assert [c["commit"] for c in delivery["correlations"]] == [applied]


async def test_observers_are_told_each_action_and_refusal_and_cannot_fail_a_delivery(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    base = repo.commit({"apps/a.yaml": "a: 1\n"}, "base")
    repo.commit(
        {"apps/a.yaml": "a: 2\n"},
        "deploy",
        {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"},
    )
    sneaky = repo.commit(
        {"apps/b.yaml": "b: 1\n"}, "sneaky", {"Airflow-Dag-Id": "other", "Airflow-Run-Id": "r2"}
    )
    config = worker_config(tmp_path, repo)
    metrics = Metrics()
    observer = RecordingObserver()
    background = fast_worker(config, journal, metrics, [BrokenObserver(), observer])
    async with running(config, journal, metrics=metrics, background=[background]) as service:
        first = await post(service, base)
        await until_state(service, first, "done")
        # Another delivery marked the task already, so this one finds it done without calling Airflow.
        key = "mark:default:deploy:r1:wait:all"
        await journal.begin_action(first, key, "mark_task", {"dag_id": "deploy"})
        await journal.finish_action(key, ActionState.DONE, "task wait of deploy run r1: marked success")
        with structlog.testing.capture_logs() as logs:
            delivery = await until_state(service, await post(service, sneaky), "done")

    verdict = "DAG 'other' (instance 'default') not allowed for Kustomization/flux-system/apps by the policy"
    assert observer.seen == [("refused", sneaky, verdict), ("performed", key, "already")]
    assert f"already done by delivery {first}" in " | ".join(d["text"] for d in delivery["decisions"])
    assert (await journal.object_state("Kustomization/flux-system/apps")).last_applied == sneaky
    failures = [e for e in logs if e["event"] == "pipeline.observer_failed"]
    assert [e["observer"] for e in failures] == ["BrokenObserver", "BrokenObserver"]


@dataclass
class StateAtAction:
    """Writes down the delivery's state in the journal each time an action has been performed."""

    journal: Journal
    states: list[str] = field(default_factory=list)

    async def performed(self, delivery: Delivery, action: Action, result: Performed) -> None:
        found = await self.journal.get(delivery.id)
        self.states.append("missing" if found is None else found.state.value)

    async def refused(self, delivery: Delivery, correlation: Correlation) -> None:
        pass

    async def dead(self, delivery: Delivery, reason: str) -> None:
        pass


async def test_a_delivery_is_acting_while_its_actions_run_and_its_outcome_comes_after(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    base = repo.commit({"apps/a.yaml": "a: 1\n"}, "base")
    config = worker_config(tmp_path, repo)
    metrics = Metrics()
    observer = StateAtAction(journal)
    async with running(
        config, journal, metrics=metrics, background=[fast_worker(config, journal, metrics, [observer])]
    ) as service:
        first = await post(service, base)
        await until_state(service, first, "done")
        # Done by an earlier delivery: the action is found done without calling Airflow (down here).
        key = "mark:default:deploy:r1:wait:all"
        await journal.begin_action(first, key, "mark_task", {"dag_id": "deploy"})
        await journal.finish_action(key, ActionState.DONE, "task wait of deploy run r1: marked success")
        trailers = {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"}
        deploy = await post(service, repo.commit({"apps/a.yaml": "a: 2\n"}, "deploy", trailers))
        await until_state(service, deploy, "done")

    assert observer.states == ["acting"]


class RepositoryGone(Resolver):
    """A resolver that finds the delivery can never be resolved."""

    async def resolve(self, delivery: Delivery, facts: EventFacts) -> Resolution:
        raise PermanentError("repository flux-system/flux-system was deleted")


async def test_a_permanent_error_makes_a_dead_letter_at_once(tmp_path: Path, journal: SqliteJournal) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    config = worker_config(tmp_path, repo)
    metrics = Metrics()
    observer = RecordingObserver()
    airflow = AirflowClients.from_config(config.airflow)
    pipeline = Pipeline(
        config=config,
        journal=journal,
        resolver=RepositoryGone(
            journal=journal, mirrors=Mirrors(config.git), policy=Policy(()), default_instance="default"
        ),
        actor=Actor(journal, airflow, metrics),
        metrics=metrics,
        observers=[observer],
    )
    clock = FastClock()
    worker = Worker(
        journal=journal,
        pipeline=pipeline,
        config=config.worker,
        metrics=metrics,
        clock=clock.time,
        sleep=clock.sleep,
    )
    task = asyncio.create_task(worker.run())
    try:
        async with running(config, journal, metrics=metrics) as service:
            delivery_id = await post(service, repo.commit({"apps/a.yaml": "a: 1\n"}, "plain"))
            dead = await until_state(service, delivery_id, "dead")
            await until(lambda: bool(observer.seen))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await airflow.close()
    assert dead["attempts"] == 1
    assert dead["last_error"] == "repository flux-system/flux-system was deleted"
    assert dead_letters(metrics) == 1
    assert observer.seen == [("dead", str(delivery_id), "repository flux-system/flux-system was deleted")]


async def test_a_journaled_event_wakes_the_worker_at_once(tmp_path: Path, journal: SqliteJournal) -> None:
    """Polling is only the safety net: with a poll of 60 s, a new event is still taken at once."""
    repo = GitOpsRepo(tmp_path / "git")
    sha = repo.commit({"apps/a.yaml": "a: 1\n"}, "no trailers here")
    config = worker_config(tmp_path, repo, poll_interval_seconds=60)
    metrics = Metrics()
    async with running(
        config, journal, metrics=metrics, background=[worker_service(config, journal, metrics)]
    ) as service:
        await asyncio.sleep(0.2)  # the worker has claimed nothing and is waiting
        started = asyncio.get_running_loop().time()
        first = await post(service, None, name="one", reason="ReconciliationSucceeded")
        await until_state(service, first, "done")
        second = await post(service, sha, name="apps")
        await until_state(service, second, "done")
        assert asyncio.get_running_loop().time() - started < 10  # far below one poll interval
