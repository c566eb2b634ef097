"""What the service's git mirrors raise: each error is a `TemporaryError` or a `PermanentError`."""

from __future__ import annotations

from receiver.errors import PermanentError, TemporaryError


class MirrorError(Exception):
    """A problem of the service's git mirrors; each is a `TemporaryError` or a `PermanentError`."""

    reason: str


class TemporaryMirrorError(TemporaryError, MirrorError):
    """Fetching failed (network, timeout, authentication): retry later. Names the repository, no secret."""


class RevisionNotFound(PermanentError, MirrorError):
    """The repository has no such commit, even after fetching."""


class AmbiguousRevision(PermanentError, MirrorError):
    """A short SHA matches more than one object in the repository."""


class GitConfigError(PermanentError, MirrorError):
    """The git configuration cannot serve the request (unknown repository)."""
