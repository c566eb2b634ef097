"""Every configured repository's mirror, and which one (and which path) serves a Flux object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from receiver.config import GitConfig, GitRepository
from receiver.git.commits import MAX_WALK
from receiver.git.errors import GitConfigError, TemporaryMirrorError
from receiver.git.mirror import FetchObserver, Mirror


@dataclass(frozen=True)
class ObjectSource:
    """Where a Flux object comes from, as the Kubernetes API says (`receiver.kube.discovery`)."""

    repository: str
    """The Flux GitRepository as `namespace/name`: the key of its credentials in git.repositories."""
    path: str
    url: str


class ObjectLocator(Protocol):
    """Discovery as the mirrors see it; `ready` is False until every Flux kind has been listed."""

    @property
    def ready(self) -> bool: ...

    def locate(self, kind: str, namespace: str, name: str) -> ObjectSource | str | None:
        """The source; a reason why it cannot be known; None for an object not in the cluster."""


class Mirrors:
    """Every configured repository's mirror, and which one (and path) serves a Flux object."""

    def __init__(
        self,
        config: GitConfig,
        max_walk: int = MAX_WALK,
        on_fetch: FetchObserver | None = None,
        locator: ObjectLocator | None = None,
    ) -> None:
        self._config = config
        self._max_walk = max_walk
        self._on_fetch = on_fetch
        self._mirrors = {repository.name: self._mirror(repository) for repository in config.repositories}
        self._objects = config.objects
        self._locator = locator

    def _mirror(self, repository: GitRepository) -> Mirror:
        config = self._config
        return Mirror(
            repository, config.cache_dir, config.fetch_timeout_seconds, self._max_walk, self._on_fetch
        )

    def get(self, repository_name: str) -> Mirror:
        """The mirror of a configured repository (`namespace/name`).

        Raises:
            GitConfigError: no such repository in `git.repositories`.
        """
        try:
            return self._mirrors[repository_name]
        except KeyError:
            raise GitConfigError(f"no repository {repository_name!r} in git.repositories") from None

    def for_object(self, kind: str, namespace: str, name: str) -> tuple[Mirror, str] | str:
        """The mirror and path for a Flux object: `git.objects` first, then what the cluster says
        (when Kubernetes is enabled); a GitRepository is its own repository.

        Returns why not, in an operator's words, for objects that cannot be mapped to a repository.

        Raises:
            TemporaryMirrorError: the Kubernetes API has not been listed yet; ask again later.
        """
        for obj in self._objects:
            if (obj.kind, obj.namespace, obj.name) == (kind, namespace, name):
                return self.get(obj.repository), obj.path
        key = f"{kind}/{namespace}/{name}"
        if self._locator is not None:
            if not self._locator.ready:
                raise TemporaryMirrorError(
                    f"the Flux objects are not listed from Kubernetes yet; {key} waits"
                )
            located = self._locator.locate(kind, namespace, name)
            if isinstance(located, str):
                return located
            if located is not None:
                return self._discovered(located)
        mirror = self._mirrors.get(f"{namespace}/{name}")
        if kind == "GitRepository" and mirror is not None:
            return mirror, ""
        return f"no git repository configured for {key} (git.objects)"

    def _discovered(self, source: ObjectSource) -> tuple[Mirror, str] | str:
        mirror = self._mirrors.get(source.repository)
        if mirror is None:
            return (
                f"GitRepository {source.repository} ({source.url}) has no entry in git.repositories:"
                " add one with its credentials"
            )
        if not mirror.repository.url:
            # The configured entry holds only credentials; the cluster names the URL.
            mirror = self._mirror(mirror.repository.model_copy(update={"url": source.url}))
            self._mirrors[source.repository] = mirror
        return mirror, source.path
