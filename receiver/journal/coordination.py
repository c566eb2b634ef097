"""What replicas sharing one journal tell each other: new work has arrived, and who leads.

`WorkSignal` wakes the worker as soon as an event is journaled (by this process,
or by another replica through PostgreSQL's LISTEN/NOTIFY), so polling is only a
safety net. `Leadership` says whether this replica runs the singleton work
(retention, the Kubernetes full re-lists): with SQLite the one replica always
leads; with PostgreSQL the replica holding an advisory lock on its control
connection leads, and loses it the moment that connection dies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class WorkSignal:
    """Set when work may have become due; the worker waits on it between claims."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, at_most: float) -> bool:
        """True when notified (the signal is then reset), False after `at_most` seconds."""
        try:
            await asyncio.wait_for(self._event.wait(), at_most)
        except TimeoutError:
            return False
        self._event.clear()
        return True


class Leadership:
    """Whether this replica leads; how singleton work (retention, full re-lists) knows to run.

    Use it in one of two ways:

    - check `is_leader` right before a singleton step and skip the step when False, or
    - run the singleton loop with `while_leading(leadership, run)`: `run()` is started once
      this replica leads and cancelled as soon as it stops leading, then started again when
      it leads again.

    Leadership gives no fencing on its own (a replica may lose it in the middle of a step),
    so singleton work must stay idempotent; the journal's action records are the fence.
    `on_change` callbacks (e.g. the `fluxback_leader` gauge) are called with the new value.
    """

    def __init__(self) -> None:
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._following.set()
        self._callbacks: list[Callable[[bool], None]] = []

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    async def wait_leading(self) -> None:
        """Return once this replica leads (at once if it does)."""
        await self._leading.wait()

    async def wait_following(self) -> None:
        """Return once this replica does not lead (at once if it does not)."""
        await self._following.wait()

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(is_leader)` now and on every change."""
        self._callbacks.append(callback)
        callback(self.is_leader)

    def set(self, leading: bool) -> None:
        """For the journal backend: this replica now leads (True) or not (False)."""
        if leading == self.is_leader:
            return
        (self._leading if leading else self._following).set()
        (self._following if leading else self._leading).clear()
        for callback in self._callbacks:
            callback(leading)


async def while_leading(leadership: Leadership, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `run()` only while this replica leads: started when it leads, cancelled when it stops."""
    while True:
        await leadership.wait_leading()
        task = asyncio.create_task(run())
        lost = asyncio.create_task(leadership.wait_following())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, lost):
                pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lost
        if task.done() and not task.cancelled():
            task.result()  # a crash of `run` surfaces to the caller's supervisor
            return
        with contextlib.suppress(asyncio.CancelledError):
            await task
