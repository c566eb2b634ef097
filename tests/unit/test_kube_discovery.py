"""Discovery: which repository and folder a Flux object applies, from the objects the cluster lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config import GitConfig, GitObject, GitRepository
from receiver.git import Mirrors, ObjectSource, TemporaryMirrorError
from receiver.kube.discovery import Discovery
from receiver.kube.kinds import GIT_REPOSITORY, HELM_RELEASE, KUSTOMIZATION, OCI_REPOSITORY, WATCHED
from tests.kube_cluster import git_repository, helm_release, kustomization

FLEET = "https://git.example.com/fleet.git"


def discovered() -> Discovery:
    discovery = Discovery()
    discovery.update(GIT_REPOSITORY, git_repository("flux-system", FLEET))
    discovery.update(KUSTOMIZATION, kustomization("apps", path="./apps"))
    for kind in WATCHED:
        discovery.listed(kind)
    return discovery


def test_a_kustomization_applies_its_sources_folder() -> None:
    discovery = discovered()
    assert discovery.locate("Kustomization", "flux-system", "apps") == ObjectSource(
        repository="flux-system/flux-system", path="./apps", url=FLEET
    )
    assert discovery.locate("GitRepository", "flux-system", "flux-system") == ObjectSource(
        repository="flux-system/flux-system", path="", url=FLEET
    )
    assert discovery.locate("Kustomization", "flux-system", "elsewhere") is None  # e.g. another cluster's


def test_what_cannot_be_traced_says_why() -> None:
    discovery = discovered()
    discovery.update(KUSTOMIZATION, kustomization("orphan", source="gone"))
    oci = kustomization("oci")
    oci["spec"]["sourceRef"] = {"kind": "OCIRepository", "name": "manifests"}
    discovery.update(KUSTOMIZATION, oci)
    discovery.update(
        HELM_RELEASE,
        helm_release(
            "redis",
            chart={"spec": {"chart": "redis", "sourceRef": {"kind": "HelmRepository", "name": "bitnami"}}},
        ),
    )
    assert discovery.locate("Kustomization", "flux-system", "orphan") == (
        "GitRepository flux-system/gone is not in the cluster (or not visible to Fluxback)"
    )
    assert discovery.locate("Kustomization", "flux-system", "oci") == (
        "Kustomization flux-system/oci applies OCIRepository flux-system/manifests, not a GitRepository:"
        " map it in git.objects"
    )
    pushed = {
        "url": "oci://registry/manifests",
        "metadata": {
            "org.opencontainers.image.source": FLEET,
            "org.opencontainers.image.revision": "main@sha1:" + "a" * 40,
        },
    }
    discovery.update(
        OCI_REPOSITORY,
        {"metadata": {"namespace": "flux-system", "name": "manifests"}, "status": {"artifact": pushed}},
    )
    assert discovery.locate("Kustomization", "flux-system", "oci") == (
        f"Kustomization flux-system/oci applies OCIRepository flux-system/manifests (built from {FLEET} at"
        f" main@sha1:{'a' * 40}), not a GitRepository: map it in git.objects"
    )
    located = discovery.locate("HelmRelease", "apps", "redis")
    assert isinstance(located, str) and "no Git commit to trace" in located


def test_helmreleases_are_traced_through_their_chart_source_or_the_kustomization_that_applies_them() -> None:
    discovery = discovered()
    chart = {
        "chart": "./charts/etl",
        "reconcileStrategy": "Revision",
        "sourceRef": {"kind": "GitRepository", "name": "flux-system", "namespace": "flux-system"},
    }
    discovery.update(HELM_RELEASE, helm_release("etl", chart={"spec": chart}))
    applied = helm_release("web")
    applied["metadata"]["labels"] = {
        "kustomize.toolkit.fluxcd.io/name": "apps",
        "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
    }
    discovery.update(HELM_RELEASE, applied)
    assert discovery.locate("HelmRelease", "apps", "etl") == ObjectSource(
        repository="flux-system/flux-system", path="./charts/etl", url=FLEET
    )
    assert discovery.locate("HelmRelease", "apps", "web") == ObjectSource(
        repository="flux-system/flux-system", path="./apps", url=FLEET
    )
    discovery.remove(KUSTOMIZATION, "flux-system", "apps")
    assert discovery.locate("HelmRelease", "apps", "web") == (
        "the Kustomization flux-system/apps that applies it is not in the cluster"
    )


def test_mirrors_take_the_url_from_the_cluster_and_credentials_from_the_config(tmp_path: Path) -> None:
    discovery = Discovery()
    config = GitConfig(
        cache_dir=tmp_path,
        repositories=(GitRepository(name="flux-system/flux-system", token_file=tmp_path / "token"),),
        objects=(
            GitObject(
                kind="Kustomization",
                namespace="flux-system",
                name="pinned",
                repository="flux-system/flux-system",
                path="./pinned",
            ),
        ),
    )
    mirrors = Mirrors(config, locator=discovery)
    with pytest.raises(TemporaryMirrorError, match="not listed from Kubernetes yet"):
        mirrors.for_object("Kustomization", "flux-system", "apps")
    for kind in WATCHED:
        discovery.listed(kind)
    discovery.update(GIT_REPOSITORY, git_repository("flux-system", FLEET))
    discovery.update(GIT_REPOSITORY, git_repository("other", "https://git.example.com/other.git"))
    discovery.update(KUSTOMIZATION, kustomization("apps"))
    discovery.update(KUSTOMIZATION, kustomization("tools", source="other", path="./tools"))
    located = mirrors.for_object("Kustomization", "flux-system", "apps")
    assert not isinstance(located, str)
    mirror, path = located
    assert (mirror.repository.url, mirror.repository.token_file, path) == (
        FLEET,
        tmp_path / "token",
        "./apps",
    )
    assert mirrors.for_object("Kustomization", "flux-system", "tools") == (
        "GitRepository flux-system/other (https://git.example.com/other.git) has no entry in"
        " git.repositories: add one with its credentials"
    )
    # git.objects still overrides what the cluster says.
    assert mirrors.for_object("Kustomization", "flux-system", "pinned")[1] == "./pinned"
