"""The service's view of the GitOps repositories: local mirrors, commit lookup by SHA, the applied range.

- `errors`: what the mirrors raise, temporary or permanent, for the worker's retries.
- `commits`: reading a mirror with pygit2 (lookups, the applied range under a path).
- `commands`: the `git` CLI for partial fetches and signature checks, with the credentials.
- `mirror`: one repository's mirror, created, opened and fetched on demand.
- `mirrors`: every configured mirror, and which one serves a Flux object.
"""

from receiver.git.commits import MAX_WALK, AppliedCommits, Basis, CommitInfo
from receiver.git.errors import (
    AmbiguousRevision,
    GitConfigError,
    MirrorError,
    RevisionNotFound,
    TemporaryMirrorError,
)
from receiver.git.mirror import FetchObserver, Mirror
from receiver.git.mirrors import Mirrors, ObjectLocator, ObjectSource

__all__ = [
    "MAX_WALK",
    "AmbiguousRevision",
    "AppliedCommits",
    "Basis",
    "CommitInfo",
    "FetchObserver",
    "GitConfigError",
    "Mirror",
    "MirrorError",
    "Mirrors",
    "ObjectLocator",
    "ObjectSource",
    "RevisionNotFound",
    "TemporaryMirrorError",
]
