"""The Flux kinds Fluxback reads from the Kubernetes API, with their API coordinates.

Versions are the served storage versions of current Flux (2.6 and later); the
groups never change across Flux releases, which is what RBAC names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FluxKind:
    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


KUSTOMIZATION = FluxKind("Kustomization", "kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
HELM_RELEASE = FluxKind("HelmRelease", "helm.toolkit.fluxcd.io", "v2", "helmreleases")
GIT_REPOSITORY = FluxKind("GitRepository", "source.toolkit.fluxcd.io", "v1", "gitrepositories")
OCI_REPOSITORY = FluxKind("OCIRepository", "source.toolkit.fluxcd.io", "v1", "ocirepositories")

WATCHED = (GIT_REPOSITORY, OCI_REPOSITORY, KUSTOMIZATION, HELM_RELEASE)
"""Sources first, so that discovery knows a repository before the objects that apply it."""
