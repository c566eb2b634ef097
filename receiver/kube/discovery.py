"""Which repository and folder each Flux object applies, as the cluster says.

A Kustomization names its source (`spec.sourceRef`, namespace defaulting to
its own) and folder (`spec.path`); the GitRepository names the URL. A
HelmRelease whose chart is built from a GitRepository with
`reconcileStrategy: Revision` is traced to that repository and the chart's
folder (its chart version carries `+<12 hex>` of the commit); one applied by a
Kustomization (its `kustomize.toolkit.fluxcd.io/name|namespace` labels) is
traced to that Kustomization's repository and folder. Anything else gets a
reason instead of a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.git import ObjectSource
from receiver.kube.kinds import GIT_REPOSITORY, HELM_RELEASE, KUSTOMIZATION, OCI_REPOSITORY, WATCHED, FluxKind

APPLIED_BY_NAME = "kustomize.toolkit.fluxcd.io/name"
APPLIED_BY_NAMESPACE = "kustomize.toolkit.fluxcd.io/namespace"
OCI_SOURCE = "org.opencontainers.image.source"
OCI_REVISION = "org.opencontainers.image.revision"


def _field(obj: Mapping[str, Any] | None, *path: str) -> Any:
    value: Any = obj
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _text(obj: Mapping[str, Any] | None, *path: str) -> str:
    value = _field(obj, *path)
    return value if isinstance(value, str) else ""


class Discovery:
    """The Flux objects seen by the watches, and what they say about repositories and folders."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        self._listed: set[str] = set()

    @property
    def ready(self) -> bool:
        """Every watched kind has been listed once: an object not seen by now is not in the cluster."""
        return self._listed >= {kind.kind for kind in WATCHED}

    def listed(self, kind: FluxKind) -> None:
        self._listed.add(kind.kind)

    def update(self, kind: FluxKind, obj: Mapping[str, Any]) -> None:
        key = (kind.kind, _text(obj, "metadata", "namespace"), _text(obj, "metadata", "name"))
        self._objects[key] = obj

    def remove(self, kind: FluxKind, namespace: str, name: str) -> None:
        self._objects.pop((kind.kind, namespace, name), None)

    def locate(self, kind: str, namespace: str, name: str) -> ObjectSource | str | None:
        """The repository and folder of a Flux object; a reason when it cannot be known;
        None when the cluster has no such object (e.g. an event from another cluster)."""
        obj = self._objects.get((kind, namespace, name))
        if obj is None:
            return None
        if kind == GIT_REPOSITORY.kind:
            return self._git_source(namespace, name, "")
        if kind == KUSTOMIZATION.kind:
            return self._kustomization(obj, namespace)
        if kind == HELM_RELEASE.kind:
            return self._helm_release(obj, namespace)
        return f"{kind} {namespace}/{name} is not applied from a Git repository"

    def _git_source(self, namespace: str, name: str, path: str) -> ObjectSource | str:
        repository = self._objects.get((GIT_REPOSITORY.kind, namespace, name))
        if repository is None:
            return f"GitRepository {namespace}/{name} is not in the cluster (or not visible to Fluxback)"
        url = _text(repository, "spec", "url")
        if not url:
            return f"GitRepository {namespace}/{name} has no spec.url"
        return ObjectSource(repository=f"{namespace}/{name}", path=path, url=url)

    def _kustomization(self, obj: Mapping[str, Any], namespace: str) -> ObjectSource | str:
        source_kind = _text(obj, "spec", "sourceRef", "kind")
        source_name = _text(obj, "spec", "sourceRef", "name")
        source_namespace = _text(obj, "spec", "sourceRef", "namespace") or namespace
        if source_kind != GIT_REPOSITORY.kind:
            name = _text(obj, "metadata", "name")
            origin = self._built_from(source_kind, source_namespace, source_name)
            return (
                f"Kustomization {namespace}/{name} applies {source_kind or 'a source'}"
                f" {source_namespace}/{source_name}{origin}, not a GitRepository: map it in git.objects"
            )
        return self._git_source(source_namespace, source_name, _text(obj, "spec", "path"))

    def _built_from(self, kind: str, namespace: str, name: str) -> str:
        """For an OCI artifact pushed from Git (`flux push artifact --source`): where it came from.

        The artifact's folder in that repository is not recorded anywhere, so it is named for
        the operator's git.objects entry rather than guessed (a wrong folder would let commits
        of other folders speak for Airflow runs).
        """
        if kind != OCI_REPOSITORY.kind:
            return ""
        artifact = _field(self._objects.get((kind, namespace, name)), "status", "artifact", "metadata")
        source, revision = _text(artifact, OCI_SOURCE), _text(artifact, OCI_REVISION)
        return f" (built from {source} at {revision})" if source else ""

    def _helm_release(self, obj: Mapping[str, Any], namespace: str) -> ObjectSource | str:
        chart = _field(obj, "spec", "chart", "spec")
        source_kind = _text(chart, "sourceRef", "kind")
        if source_kind == GIT_REPOSITORY.kind and _text(chart, "reconcileStrategy") == "Revision":
            source_namespace = _text(chart, "sourceRef", "namespace") or namespace
            return self._git_source(
                source_namespace, _text(chart, "sourceRef", "name"), _text(chart, "chart")
            )
        labels = _field(obj, "metadata", "labels")
        applier = _text(labels, APPLIED_BY_NAME)
        if applier:
            applier_namespace = _text(labels, APPLIED_BY_NAMESPACE) or namespace
            located = self.locate(KUSTOMIZATION.kind, applier_namespace, applier)
            return (
                located
                if located is not None
                else (
                    f"the Kustomization {applier_namespace}/{applier} that applies it is not in the cluster"
                )
            )
        name = _text(obj, "metadata", "name")
        return (
            f"HelmRelease {namespace}/{name}: its chart is not built from a GitRepository with"
            " reconcileStrategy: Revision and no Kustomization applies it: no Git commit to trace"
        )
