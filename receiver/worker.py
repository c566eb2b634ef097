"""The worker loop: claims deliveries from the journal and runs the pipeline on each.

Events of one Flux object are handled strictly in order (the journal hands
out only the oldest unfinished delivery of an object), different objects in
parallel up to `worker.concurrency`. What happens to one delivery is the
pipeline's business (receiver/pipeline.py); this module decides what happens
after it: a `TemporaryError` (git remote or Airflow unreachable, 429, 5xx)
sends the delivery back with exponential backoff and jitter, and once the
budget of attempts or age is spent it becomes a dead letter; a
`PermanentError` makes it a dead letter at once. Every outcome leaves a
decision on the delivery in an operator's words, so `/deliveries` answers
"what happened to revision X, and why".
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from receiver.config import WorkerConfig
from receiver.errors import PermanentError, TemporaryError
from receiver.journal import Delivery, DeliveryState, Journal, JournalUnavailable
from receiver.metrics import Metrics
from receiver.pipeline import Pipeline

log = structlog.get_logger(__name__)


def retry_delay(attempts: int, config: WorkerConfig, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with jitter; never sooner than the server's Retry-After."""
    ceiling = min(config.retry_max_seconds, config.retry_initial_seconds * 2.0 ** max(0, attempts - 1))
    delay = ceiling * rng.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


class Worker:
    """The loop: claim due deliveries, process each in its own task, retry or bury failures."""

    def __init__(
        self,
        *,
        journal: Journal,
        pipeline: Pipeline,
        config: WorkerConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`clock` (epoch seconds) and `sleep` decide when retries are due and how the idle loop waits."""
        self._journal = journal
        self._pipeline = pipeline
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
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
        """Until a delivery finishes, new work is journaled, or the poll interval (a safety net) passes."""
        waits = [
            asyncio.create_task(self._journal.wait_for_work(self._config.poll_interval_seconds)),
            asyncio.ensure_future(self._sleep(self._config.poll_interval_seconds)),
        ]
        try:
            done, _ = await asyncio.wait(
                {*waits, *self._running.values()}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()
        for key in [k for k, task in self._running.items() if task in done]:
            del self._running[key]

    async def _handle(self, delivery: Delivery) -> None:
        with structlog.contextvars.bound_contextvars(
            delivery_id=delivery.id, object=delivery.object_key, revision=delivery.revision
        ):
            log.debug("delivery.claimed", attempts=delivery.attempts)
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
            await self._pipeline.process(delivery)
        except TemporaryError as problem:
            await self._retry_or_bury(delivery, problem.reason, problem.retry_after)
            return
        except PermanentError as problem:
            await self._bury(delivery, problem.reason)
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
            await self._bury(delivery, reason)
            return
        next_at = datetime.fromtimestamp(now, UTC) + timedelta(seconds=delay)
        await self._journal.set_state(
            delivery.id,
            DeliveryState.FAILED,
            next_attempt_at=next_at,
            error=reason,
            decision=f"temporary problem, attempt {delivery.attempts}: {reason}; retry in {delay:.0f}s",
        )
        log.warning("delivery.retry", attempts=delivery.attempts, delay=round(delay, 1), error=reason)

    async def _bury(self, delivery: Delivery, reason: str) -> None:
        """Make the delivery a dead letter, which only an operator's replay takes up again."""
        await self._journal.set_state(
            delivery.id,
            DeliveryState.DEAD,
            error=reason,
            decision=f"dead letter after {delivery.attempts} attempt(s): {reason};"
            " replay it once the cause is fixed",
        )
        self._metrics.dead_letters.inc()
        log.error("delivery.dead", attempts=delivery.attempts, error=reason)
        await self._pipeline.dead(delivery, reason)
