"""Readiness and the detailed health view: what each check means and who it affects.

Readiness (`/readyz`, `fluxback_ready`) answers one question: can this process accept
and journal an event right now? It is false when no webhook key can verify anything,
when a probe write does not commit within `journal_timeout_seconds`, or while appends
are failing. Everything else (admin, Airflow and git credentials) only affects the
worker: making the pod unready for it would make Flux's events fail too, so those
problems show in `/healthz/details`, in `fluxback_health_check` and in the decisions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from receiver.auth import usable_count
from receiver.config import Config, secret_files
from receiver.journal import Journal
from receiver.metrics import Metrics
from receiver.readiness import ReadinessChecks
from receiver.secrets import FileSecret, secret_file_problem

APPEND_FAILURE_MEMORY_SECONDS = 30.0
"""How long a failed append keeps the pod unready when nothing has committed since.

A probe write can succeed while appends fail (a full disk still takes a one-row update),
so a failed append counts until an append succeeds. Without traffic (an unready pod gets
none) it is forgotten after this long and the probe alone decides again."""


class Affects(StrEnum):
    INGEST = "ingest"
    """Events cannot be accepted: the pod is unready."""
    WORKER = "worker"
    """Events are accepted and journaled; acting on them may fail (see the decisions)."""


@dataclass(frozen=True)
class Check:
    name: str
    """The configuration key or component checked (`journal`, `airflow.instances.default.token_file`)."""
    affects: Affects
    problem: str | None = None
    """None when the check passed; otherwise what is wrong, without any secret."""

    @property
    def ok(self) -> bool:
        return self.problem is None


class AppendOutcomes:
    """The outcome of recent appends, recorded by ingest and read by readiness."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failed_at: float | None = None
        self._reason = ""

    def succeeded(self) -> None:
        self._failed_at = None

    def failed(self, reason: str) -> None:
        self._failed_at = self._clock()
        self._reason = reason

    def recent_failure(self) -> str | None:
        """Why the last append failed, if it did within the memory window and none succeeded since."""
        if self._failed_at is None:
            return None
        age = self._clock() - self._failed_at
        if age > APPEND_FAILURE_MEMORY_SECONDS:
            return None
        return f"the last append failed {age:.0f} s ago ({self._reason}) and none has committed since"


class Health:
    """Evaluates the checks; every journal call is bounded by `journal_timeout_seconds`."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        metrics: Metrics,
        appends: AppendOutcomes,
        services: ReadinessChecks,
    ) -> None:
        self.config = config
        self.journal = journal
        self.metrics = metrics
        self.appends = appends
        self.services = services
        webhook = config.webhook
        self._hmac = [FileSecret(p) for p in webhook.hmac_keys]
        self._bearer = [FileSecret(p) for p in webhook.bearer_tokens]

    def _webhook_keys(self) -> Check:
        configured = self._hmac + self._bearer
        if not configured or usable_count(self._hmac) + usable_count(self._bearer):
            return Check("webhook keys", Affects.INGEST)
        problems = [
            f"{key}: {problem}"
            for key, path in secret_files(self.config)
            if key.startswith("webhook.") and (problem := secret_file_problem(path))
        ]
        return Check(
            "webhook keys", Affects.INGEST, "no webhook key can verify an event: " + "; ".join(problems)
        )

    async def _journal(self) -> Check:
        deadline = self.config.journal_timeout_seconds
        try:
            async with asyncio.timeout(deadline):
                await self.journal.ping()
        except TimeoutError:
            return Check("journal", Affects.INGEST, f"a probe write did not commit within {deadline:g} s")
        except Exception as error:  # whatever the reason, the journal cannot take events now
            return Check("journal", Affects.INGEST, f"a probe write failed: {error}")
        return Check("journal", Affects.INGEST, self.appends.recent_failure())

    async def readiness(self) -> Sequence[Check]:
        """The ingest checks; also sets `fluxback_ready`."""
        checks = [self._webhook_keys(), await self._journal()]
        for problem in self.services.problems():  # the Kubernetes watches, when enabled
            name, _, text = problem.partition(": ")
            checks.append(Check(name, Affects.INGEST, text or problem))
        self.metrics.ready.set(1 if all(c.ok for c in checks) else 0)
        return checks

    async def details(self) -> Sequence[Check]:
        """Readiness plus every file the worker needs; also sets `fluxback_health_check`."""
        checks = [*await self.readiness()]
        for key, path in secret_files(self.config):
            if not key.startswith("webhook."):  # those are the readiness check above
                checks.append(Check(key, Affects.WORKER, secret_file_problem(path)))
        for check in checks:
            self.metrics.health_check.labels(check.name).set(1 if check.ok else 0)
        return checks
