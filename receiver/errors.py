"""Two kinds of failure, so the worker decides what to do by kind, not by who failed.

Modelled on kopf's `TemporaryError(delay=...)` / `PermanentError`: a `TemporaryError`
(a remote unreachable, timed out, overloaded, failing) sends the delivery back to be
tried again, no sooner than `retry_after` seconds when the remote said so; a
`PermanentError` cannot succeed by retrying the same thing. Each side raises its own
subclass (`TemporaryAirflowError`, `TemporaryMirrorError`, ...) and the worker catches
only these two bases. Any other exception is a bug: the worker retries it too and says so.

This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Sequence


class TemporaryError(Exception):
    """Worth trying again later; `reason` is for operators and never holds a secret."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        """Seconds to wait at the least (e.g. the server's `Retry-After`); None when nobody said."""


class PermanentError(Exception):
    """Retrying the same thing cannot succeed; `reason` says what to fix, without secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def combined(errors: Sequence[TemporaryError]) -> TemporaryError:
    """Several temporary errors of one attempt as one: every reason, the longest wait asked for."""
    retry_after = max((error.retry_after or 0.0) for error in errors) or None
    return TemporaryError("; ".join(error.reason for error in errors), retry_after=retry_after)
