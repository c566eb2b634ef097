"""Readiness conditions that background services contribute to `/readyz`.

The HTTP side must not import the services (nothing slow before the 202), so
a service that affects whether events can be taken in (the Kubernetes
watches, when enabled) registers a check here, and `/readyz` asks them all.
"""

from __future__ import annotations

from collections.abc import Callable

Check = Callable[[], list[str]]
"""Returns the problems that make the service not ready, each naming what to look at; [] when fine."""


class ReadinessChecks:
    def __init__(self) -> None:
        self._checks: list[Check] = []

    def add(self, check: Check) -> None:
        self._checks.append(check)

    def problems(self) -> list[str]:
        return [problem for check in self._checks for problem in check()]
