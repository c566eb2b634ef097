"""Group commit: jobs that queue up while a transaction commits share the next one.

Callers `submit` a job and wait for its own outcome. One batch runs at a time; whatever
arrives meanwhile forms the next batch, so under load many jobs share one commit (one
fsync) and each caller still hears back only once its job is durable. A batch that fails
as a whole fails every job in it; a job that fails alone (its outcome is an exception)
fails only its caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

from receiver.journal.base import JournalUnavailable

J = TypeVar("J")
R = TypeVar("R")

log = structlog.get_logger(__name__)


class GroupCommit(Generic[J, R]):
    """`run_batch(jobs)` returns one outcome per job, in order: a result or the exception to raise."""

    def __init__(self, run_batch: Callable[[Sequence[J]], Awaitable[Sequence[R | Exception]]]) -> None:
        self._run_batch = run_batch
        self._queued: list[tuple[J, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, job: J) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.append((job, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                outcomes = await self._run_batch([job for job, _ in batch])
            except Exception as error:  # whatever it is, every caller of the batch gets an answer
                if not isinstance(error, JournalUnavailable):
                    log.exception("journal.batch_failed")
                    error = JournalUnavailable(f"journal error: {type(error).__name__}")
                outcomes = [error] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the caller went away; its job is committed all the same
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
