"""What happens to one delivery: resolve -> correlate -> plan -> act, then the object's state.

`Pipeline.process` runs the steps in order for a delivery the worker claimed:

1. `Resolver.resolve` (receiver/resolve.py) reads the commits the event made live and
   correlates them with the Airflow runs their trailers name. Its `Resolution` says
   whether anything is left to do (`finished` names why not).
2. `plan_actions` (receiver/plan.py) turns the resolution and the rules into `Action`s:
   data, nothing performed yet.
3. Each action is performed by the `Actor` (receiver/actions.py), once per idempotency key.
   Every action gets its chance even when an earlier one hits a temporary problem; the
   retry then repeats only what is not done yet.
4. The object's last applied (or failed) revision is recorded, so the next event of the
   object starts from there, and the deploy is counted in the metrics.

Extension point: `Observer`. A pipeline is built with an ordered sequence of observers
(`Pipeline(..., observers=[...])`, wired in `receiver.service.worker_service`); each is told,
in that order, of every action performed (`Observer.performed`, with its `Performed`
result, including "already done" and permanent errors), every commit whose trailers are
refused (`Observer.refused`, with the `Correlation` record and its verdict), and every
delivery given up as a dead letter (`Observer.dead`, called by the worker through
`Pipeline.dead`). Observers are best effort: one that raises is logged
(`pipeline.observer_failed`) and changes nothing else, so an observer can never fail, repeat
or hold back an Airflow action. Adding a step such as "record a Kubernetes Event for each
action and each refusal" is one more entry in that list; an observer should hand slow work
to its own task rather than make the delivery wait.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

import structlog

from receiver.actions import Action, Actor, Performed
from receiver.config import Config
from receiver.errors import TemporaryError, combined
from receiver.events import parse_event
from receiver.journal import Correlation, Delivery, DeliveryState, Journal
from receiver.metrics import Metrics
from receiver.plan import plan_actions
from receiver.resolve import Resolution, Resolver
from receiver.rules import EventFacts

log = structlog.get_logger(__name__)


class Observer(Protocol):
    """Told what the pipeline did for a delivery; see the module docstring for the guarantees."""

    async def performed(self, delivery: Delivery, action: Action, result: Performed) -> None:
        """An action was performed, found done already, or refused by Airflow for good."""

    async def refused(self, delivery: Delivery, correlation: Correlation) -> None:
        """A commit's Airflow trailers are not acted on; `correlation.verdict` says why."""

    async def dead(self, delivery: Delivery, reason: str) -> None:
        """The delivery is given up after its retry budget; an operator can replay it."""


class Pipeline:
    """Resolve -> correlate -> plan -> act for one delivery at a time (many at once, one per object)."""

    def __init__(
        self,
        *,
        config: Config,
        journal: Journal,
        resolver: Resolver,
        actor: Actor,
        metrics: Metrics,
        observers: Sequence[Observer] = (),
    ) -> None:
        self._config = config
        self._journal = journal
        self._resolver = resolver
        self._actor = actor
        self._metrics = metrics
        self._observers = tuple(observers)

    async def process(self, delivery: Delivery) -> None:
        """Raises TemporaryError when the delivery must be tried again later."""
        event = parse_event(delivery.body)
        facts = EventFacts(
            kind=delivery.kind,
            namespace=delivery.namespace,
            name=delivery.name,
            outcome=delivery.outcome,
            metadata=event.metadata,
        )
        resolution = await self._resolver.resolve(delivery, facts)
        if resolution.finished is not None:
            return
        # `acting` only informs: it is written with the next write (an action record, durable
        # before Airflow is called, or the outcome), so it costs no round trip of its own.
        self._journal.note_state(delivery.id, DeliveryState.ACTING)
        for correlation in resolution.refused:
            for observer in self._observers:
                with _best_effort(observer):
                    await observer.refused(delivery, correlation)
        plan = plan_actions(delivery, facts, resolution, self._config)
        for problem in plan.problems:
            self._journal.note_decision(delivery.id, problem)
        await self._perform(delivery, plan.actions)
        await self._record(delivery, resolution, event.timestamp)

    async def dead(self, delivery: Delivery, reason: str) -> None:
        """Tell the observers that the worker gave the delivery up."""
        for observer in self._observers:
            with _best_effort(observer):
                await observer.dead(delivery, reason)

    async def _perform(self, delivery: Delivery, actions: Sequence[Action]) -> None:
        received = delivery.received_at.timestamp()
        temporary: list[TemporaryError] = []
        for action in actions:
            try:
                result = await self._actor.perform(delivery.id, action, received)
            except TemporaryError as error:
                temporary.append(error)
                continue
            for observer in self._observers:
                with _best_effort(observer):
                    await observer.performed(delivery, action, result)
        if temporary:
            raise combined(temporary)

    async def _record(self, delivery: Delivery, resolution: Resolution, event_time: datetime) -> None:
        """Move the object to the revision and count the deploy, with how long its commits took."""
        if resolution.commit is None:
            return
        lead_times: list[float] = []
        if delivery.outcome == "success":
            await self._journal.set_applied(delivery.object_key, resolution.commit, delivery.id)
            lead_times = [(event_time - c.committed_at).total_seconds() for c in resolution.commits]
        else:
            await self._journal.set_failed(delivery.object_key, resolution.commit, delivery.id)
        self._metrics.record_deploy(
            delivery.kind, delivery.namespace, delivery.name, delivery.outcome, lead_times
        )


@contextmanager
def _best_effort(observer: Observer) -> Iterator[None]:
    """An observer's failure is logged and goes no further."""
    try:
        yield
    except Exception:
        log.exception("pipeline.observer_failed", observer=type(observer).__name__)
