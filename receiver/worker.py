"""Takes deliveries from the journal and runs resolve -> correlate -> act.

Events of one Flux object are handled strictly in order (the journal hands
out only the oldest unfinished delivery of an object), different objects in
parallel up to `worker.concurrency`. A temporary problem (git remote or
Airflow unreachable, 429, 5xx) sends the delivery back with exponential
backoff and jitter; once the budget of attempts or age is spent it becomes a
dead letter. Every step leaves a decision on the delivery in an operator's
words, so `/deliveries` answers "what happened to revision X, and why".
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

import structlog

from receiver.actions import Actor, Performed
from receiver.airflow import TemporaryAirflowError
from receiver.config import Config, WorkerConfig
from receiver.correlate import AuthoringRun, correlate
from receiver.events import commit_from_revision, parse_event
from receiver.git import CommitInfo, GitError, GitTemporaryError, Mirror, Mirrors
from receiver.journal import Delivery, DeliveryState, Journal, JournalUnavailable
from receiver.metrics import Metrics
from receiver.rules import EventFacts, Policy, rule_actions
from receiver.trailers import AIRFLOW_PREFIX

log = structlog.get_logger(__name__)

ACTIONABLE_OUTCOMES = frozenset({"success", "failure"})
_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]")


class TemporaryProblem(Exception):
    """Try the delivery again later (after `retry_after` seconds at the earliest)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def retry_delay(attempts: int, config: WorkerConfig, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with jitter; never sooner than the server's Retry-After."""
    ceiling = min(config.retry_max_seconds, config.retry_initial_seconds * 2.0 ** max(0, attempts - 1))
    delay = ceiling * rng.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


def trigger_run_id(
    object_key: str, revision: str | None, outcome: str, dag_id: str, commit: str | None
) -> str:
    """A deterministic DAG run id: the same event and rule always name the same run (409 = done)."""
    digest = hashlib.sha256(f"{object_key}\n{revision}\n{outcome}\n{dag_id}".encode()).hexdigest()[:16]
    name = object_key.rsplit("/", 1)[-1]
    return _RUN_ID_UNSAFE.sub("-", f"fluxback__{name}__{(commit or 'none')[:12]}__{outcome}__{digest}")


class DeliveryProcessor:
    """Resolve -> correlate -> act for one delivery."""

    def __init__(
        self, *, config: Config, journal: Journal, mirrors: Mirrors, actor: Actor, metrics: Metrics
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._journal = journal
        self._mirrors = mirrors
        self._actor = actor
        self._policy = Policy(config.policy)

    async def process(self, delivery: Delivery) -> None:
        """Raises TemporaryProblem when the delivery must be tried again later."""
        event = parse_event(delivery.body)
        facts = EventFacts(
            kind=delivery.kind,
            namespace=delivery.namespace,
            name=delivery.name,
            outcome=delivery.outcome,
            metadata=event.metadata,
        )
        note = self._journal.add_decision
        if delivery.outcome not in ACTIONABLE_OUTCOMES:
            await note(delivery.id, f"{delivery.reason} is a {delivery.outcome} event: nothing to act on")
            return
        sha, commits, runs = await self._resolve(delivery, facts)
        if sha is None and commits is None:
            return  # already handled: the decision says why
        await self._journal.set_state(delivery.id, DeliveryState.ACTING)
        await self._act(delivery, facts, sha, commits or (), runs)
        if sha is not None:
            lead_times: list[float] = []
            if delivery.outcome == "success":
                await self._journal.set_applied(delivery.object_key, sha, delivery.id)
                lead_times = [(event.timestamp - c.committed_at).total_seconds() for c in commits or ()]
            else:
                await self._journal.set_failed(delivery.object_key, sha, delivery.id)
            self._metrics.record_deploy(
                delivery.kind, delivery.namespace, delivery.name, delivery.outcome, lead_times
            )

    async def _resolve(
        self, delivery: Delivery, facts: EventFacts
    ) -> tuple[str | None, tuple[CommitInfo, ...] | None, tuple[AuthoringRun, ...]]:
        """The full commit sha, the commits this event made live, and the runs allowed to act on.

        (None, None, ()) means the event needs nothing more (e.g. a heartbeat of an applied revision).
        """
        note = self._journal.add_decision
        if delivery.commit is None:
            await note(delivery.id, f"no commit in revision {delivery.revision!r}: only rules apply")
            return None, (), ()
        try:
            located = self._mirrors.for_object(delivery.kind, delivery.namespace, delivery.name)
        except GitTemporaryError as error:
            raise TemporaryProblem(str(error)) from error
        if isinstance(located, str):
            await note(delivery.id, f"{located}: only rules apply")
            return None, (), ()
        mirror, path = located
        try:
            sha = await self._applied_commit(delivery, delivery.commit, mirror)
        except GitTemporaryError as error:
            raise TemporaryProblem(str(error)) from error
        except GitError as problem:  # unknown after a fetch, ambiguous short sha: retrying cannot help
            await note(delivery.id, f"{problem}: commits cannot be correlated; only rules apply")
            return None, (), ()
        state = await self._journal.object_state(delivery.object_key)
        if delivery.outcome == "success" and state.last_applied == sha:
            await note(delivery.id, f"revision {sha[:12]} was already applied: nothing new", commit=sha)
            return None, None, ()
        if delivery.outcome == "failure" and state.last_failed == sha:
            await note(delivery.id, f"failure of revision {sha[:12]} was already handled", commit=sha)
            return None, None, ()
        try:
            applied = await mirror.commits_applied(state.last_applied, sha, path)
        except GitTemporaryError as error:
            raise TemporaryProblem(str(error)) from error
        basis = _basis_text(applied.basis, state.last_applied, sha, len(applied.commits), path)
        if applied.truncated:
            basis += f"; the range was longer: only the newest {len(applied.commits)} commits were read"
        await note(delivery.id, basis)
        unsigned = await self._unsigned(mirror, applied.commits)
        correlated = correlate(
            applied.commits, facts, self._policy, self._config.airflow.default_instance, unsigned
        )
        await self._journal.set_correlations(delivery.id, correlated.records)
        return sha, applied.commits, correlated.runs

    async def _applied_commit(self, delivery: Delivery, commit: str, mirror: Mirror) -> str:
        """The full sha of the commit the event reports, trusting metadata only within the revision.

        `commit` metadata comes from an object annotation, not from Flux's controllers; when the
        revision itself names a commit, the metadata commit must be that commit or an ancestor
        of it, or the revision is used: only what Flux applied may speak for Airflow runs.
        """
        sha = await mirror.resolve(commit)
        applied = commit_from_revision(delivery.revision)
        if applied is None or applied == sha:
            return sha
        applied = await mirror.resolve(applied)
        if not await mirror.contains(applied, sha):
            await self._journal.add_decision(
                delivery.id,
                f"metadata commit {sha[:12]} is not part of the applied revision {delivery.revision};"
                f" using the revision's commit {applied[:12]}",
            )
            return applied
        return sha

    @staticmethod
    async def _unsigned(mirror: Mirror, commits: tuple[CommitInfo, ...]) -> dict[str, str]:
        """Commits with Airflow trailers whose signature the repository does not accept."""
        if mirror.repository.allowed_signers_file is None:
            return {}
        problems: dict[str, str] = {}
        for commit in commits:
            if any(t.key.lower().startswith(AIRFLOW_PREFIX.lower()) for t in commit.trailers):
                problem = await mirror.signature_problem(commit.sha)
                if problem is not None:
                    problems[commit.sha] = problem
        return problems

    async def _act(
        self,
        delivery: Delivery,
        facts: EventFacts,
        sha: str | None,
        commits: tuple[CommitInfo, ...],
        runs: tuple[AuthoringRun, ...],
    ) -> None:
        received = delivery.received_at.timestamp()
        new_state: Literal["success", "failed"] = "success" if delivery.outcome == "success" else "failed"
        planned_actions: list[Callable[[], Awaitable[Performed]]] = []
        for run in runs:
            note = (
                f"Fluxback: {delivery.object_key} reported {delivery.outcome} ({delivery.reason})"
                f" for revision {delivery.revision} including commit {run.commit.sha[:12]};"
                f" delivery {delivery.id}"
            )
            planned_actions += [
                partial(
                    self._actor.mark_task,
                    delivery.id,
                    instance=run.instance,
                    dag_id=run.claim.dag_id,
                    run_id=run.claim.run_id,
                    task_id=task_id,
                    map_index=run.claim.map_index,
                    new_state=new_state,
                    note=note,
                    received_at=received,
                )
                for task_id in run.claim.task_ids
            ]
        payload = _payload(delivery, facts, sha, commits, runs)
        planned = rule_actions(self._config.rules, facts, self._config.cluster)
        for problem in planned.problems:
            await self._journal.add_decision(delivery.id, problem)
        planned_actions += [
            partial(
                self._actor.trigger_dag,
                delivery.id,
                instance=trigger.instance,
                dag_id=trigger.dag_id,
                dag_run_id=trigger_run_id(
                    delivery.object_key, delivery.revision, delivery.outcome, trigger.dag_id, sha
                ),
                conf=payload,
                note=f"Fluxback: {delivery.object_key} {delivery.outcome} at {delivery.revision}",
                received_at=received,
            )
            for trigger in planned.triggers
        ]
        planned_actions += [
            partial(
                self._actor.asset_event,
                delivery.id,
                instance=asset.instance,
                uri=asset.uri,
                key=f"asset:{asset.instance}:{asset.uri}:{delivery.object_key}:{sha or delivery.revision}"
                f":{delivery.outcome}",
                extra=payload,
                received_at=received,
            )
            for asset in planned.assets
        ]
        # Every action gets its chance even when an earlier one hits a temporary problem;
        # the retry then repeats only what is not done yet.
        temporary: list[TemporaryAirflowError] = []
        for perform in planned_actions:
            try:
                await perform()
            except TemporaryAirflowError as error:
                temporary.append(error)
        if temporary:
            retry_after = max((e.retry_after or 0.0) for e in temporary) or None
            raise TemporaryProblem("; ".join(e.reason for e in temporary), retry_after)


def _basis_text(basis: str, previous: str | None, sha: str, count: int, path: str) -> str:
    where = f" under {path}" if path not in ("", ".", "./") else ""
    if basis == "first":
        return f"first event for this object: revision {sha[:12]} alone ({count} commit{where})"
    if basis == "not-descendant":
        return (
            f"revision {sha[:12]} does not descend from the last applied {str(previous)[:12]}"
            f" (force push or rollback): revision alone ({count} commit{where})"
        )
    if basis == "same":
        return f"revision {sha[:12]} is the last applied one: no new commits"
    return f"{count} commit(s){where} in {str(previous)[:12]}..{sha[:12]}"


def _payload(
    delivery: Delivery,
    facts: EventFacts,
    sha: str | None,
    commits: tuple[CommitInfo, ...],
    runs: tuple[AuthoringRun, ...],
) -> dict[str, Any]:
    """What triggered DAG runs get as `conf` and asset events as `extra`."""
    return {
        "delivery_id": delivery.id,
        "object": {"kind": delivery.kind, "namespace": delivery.namespace, "name": delivery.name},
        "outcome": delivery.outcome,
        "reason": delivery.reason,
        "revision": delivery.revision,
        "commit": sha,
        "commits": [c.sha for c in commits],
        "authoring_runs": [
            {
                "dag_id": r.claim.dag_id,
                "run_id": r.claim.run_id,
                "instance": r.instance,
                "commit": r.commit.sha,
            }
            for r in runs
        ],
        "metadata": dict(facts.metadata),
    }


class Worker:
    """The loop: claim due deliveries, process each in its own task, retry or bury failures."""

    def __init__(
        self,
        *,
        journal: Journal,
        processor: DeliveryProcessor,
        config: WorkerConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._journal = journal
        self._processor = processor
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stranded: set[int] = set()

    async def run(self) -> None:
        """Until cancelled. Work interrupted by a crash or restart is taken up again first."""
        recovered = await self._journal.recover_interrupted()
        if recovered:
            log.info("worker.recovered", deliveries=recovered)
        try:
            while True:
                await self._claim_more()
                await self._wait()
        finally:
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _claim_more(self) -> None:
        free = self._config.concurrency - len(self._running)
        if free <= 0:
            return
        now = datetime.fromtimestamp(self._clock(), UTC)
        if not await self._put_back_stranded(now):
            return
        try:
            claimed = await self._journal.claim(now, free, frozenset(self._running))
        except JournalUnavailable as error:
            log.warning("worker.journal_unavailable", error=str(error))
            return
        for delivery in claimed:
            if delivery.attempts == 1:
                self._metrics.worker_lag.observe(max(0.0, (now - delivery.received_at).total_seconds()))
            self._running[delivery.object_key] = asyncio.create_task(self._handle(delivery))

    async def _wait(self) -> None:
        if not self._running:
            await asyncio.sleep(self._config.poll_interval_seconds)
            return
        done, _ = await asyncio.wait(
            self._running.values(),
            timeout=self._config.poll_interval_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for key in [k for k, task in self._running.items() if task in done]:
            del self._running[key]

    async def _handle(self, delivery: Delivery) -> None:
        with structlog.contextvars.bound_contextvars(
            delivery_id=delivery.id, object=delivery.object_key, revision=delivery.revision
        ):
            try:
                await self._settle(delivery)
            except JournalUnavailable as error:
                # Its outcome is not written, so it stays in progress and would hold back its
                # object; it is put back as soon as the journal answers again.
                log.warning("worker.journal_unavailable", error=str(error))
                self._stranded.add(delivery.id)

    async def _settle(self, delivery: Delivery) -> None:
        """Process the delivery and write where it stands: done, retry later, or dead."""
        try:
            await self._processor.process(delivery)
        except TemporaryProblem as problem:
            await self._retry_or_bury(delivery, problem.reason, problem.retry_after)
            return
        except JournalUnavailable:
            raise
        except Exception as error:
            # A bug must not stop the other deliveries; the delivery is retried and visible.
            log.exception("worker.internal_error")
            await self._retry_or_bury(delivery, f"internal error: {type(error).__name__}: {error}", None)
            return
        await self._journal.set_state(delivery.id, DeliveryState.DONE)
        log.info("delivery.done", outcome=delivery.outcome, reason=delivery.reason)

    async def _put_back_stranded(self, now: datetime) -> bool:
        """Make deliveries whose outcome could not be written due again; False while the journal is down."""
        for delivery_id in sorted(self._stranded):
            try:
                await self._journal.set_state(
                    delivery_id,
                    DeliveryState.FAILED,
                    next_attempt_at=now,
                    error="the journal was unavailable while recording the outcome; taken up again",
                )
            except JournalUnavailable:
                return False
            self._stranded.discard(delivery_id)
        return True

    async def _retry_or_bury(self, delivery: Delivery, reason: str, retry_after: float | None) -> None:
        delay = retry_delay(delivery.attempts, self._config, retry_after, self._rng)
        now = self._clock()
        age_then = now + delay - delivery.retry_since.timestamp()
        if delivery.attempts >= self._config.max_attempts or age_then > self._config.max_age_seconds:
            await self._journal.set_state(delivery.id, DeliveryState.DEAD, error=reason)
            await self._journal.add_decision(
                delivery.id,
                f"dead letter after {delivery.attempts} attempt(s): {reason};"
                " replay it once the cause is fixed",
            )
            self._metrics.dead_letters.inc()
            log.error("delivery.dead", attempts=delivery.attempts, error=reason)
            return
        next_at = datetime.fromtimestamp(now, UTC) + timedelta(seconds=delay)
        await self._journal.set_state(
            delivery.id, DeliveryState.FAILED, next_attempt_at=next_at, error=reason
        )
        await self._journal.add_decision(
            delivery.id, f"temporary problem, attempt {delivery.attempts}: {reason}; retry in {delay:.0f}s"
        )
        log.warning("delivery.retry", attempts=delivery.attempts, delay=round(delay, 1), error=reason)
