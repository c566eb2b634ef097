"""Flux objects as the controllers write them, and a kmock API server that kubernetes_asyncio can watch.

kmock (PyPI) emulates the API server in memory over real HTTP. Two gaps are
filled here for tests only: kubernetes_asyncio sends `watch=True` where kmock
expects `watch=true`, and kmock knows nothing about resourceVersion; logic
that depends on it is tested against `tests.unit.fake_apiserver` instead.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import kmock
import pytest
from kmock._internal import parsing
from kubernetes_asyncio.client import ApiClient, Configuration, CustomObjectsApi

from receiver.kube.kinds import GIT_REPOSITORY, HELM_RELEASE, KUSTOMIZATION, WATCHED, FluxKind

SINCE = "2026-11-25T09:00:00Z"
POLL_SECONDS = 0.02


def lowercase_watch_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes_asyncio's `watch=True` read as the `watch=true` kmock recognises."""
    original = parsing.guess_k8s

    def guess(k8s: Any, method: Any, query: dict[str, str]) -> Any:
        if "watch" in query:
            query = {**query, "watch": query["watch"].lower()}
        return original(k8s, method, query)

    monkeypatch.setattr(parsing, "guess_k8s", guess)


async def eventually(check: Callable[[], Awaitable[bool] | bool], seconds: float = 10.0) -> None:
    """Poll `check` (sync or async) until it is true; fail after `seconds`."""
    for _ in range(int(seconds / POLL_SECONDS)):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"not true within {seconds}s: {check}")


def declare_flux_kinds(server: kmock.KubernetesEmulator) -> None:
    """An empty list for each watched kind (and Events) instead of kmock's 404 for a kind without objects."""
    for kind in WATCHED:
        server.resources[f"{kind.group}/{kind.version}/{kind.plural}"] = kmock.ResourceInfo(
            namespaced=True, kind=kind.kind
        )
    server.resources["events.k8s.io/v1/events"] = kmock.ResourceInfo(namespaced=True, kind="Event")


@asynccontextmanager
async def controller_client(server: kmock.KubernetesEmulator) -> AsyncIterator[CustomObjectsApi]:
    """What plays Flux's controllers in a test: writes objects and their status through the API."""
    async with ApiClient(Configuration(host=str(server.url).rstrip("/"))) as client:
        yield CustomObjectsApi(client)


def kubeconfig_text(url: str) -> str:
    """A kubeconfig for the emulated cluster (no credentials: kmock takes any request)."""
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: test, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: test, user: {}}]\n"
        "contexts: [{name: test, context: {cluster: test, user: test}}]\n"
    )


def ready(status: str, reason: str, message: str = "", since: str = SINCE) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def kustomization(
    name: str,
    namespace: str = "flux-system",
    *,
    source: str = "flux-system",
    path: str = "./apps",
    status: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": KUSTOMIZATION.api_version,
        "kind": KUSTOMIZATION.kind,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
        "spec": {"sourceRef": {"kind": "GitRepository", "name": source}, "path": path, "interval": "10m"},
        "status": status or {},
    }


def applied(revision: str, *, since: str = SINCE) -> dict[str, Any]:
    """A Kustomization status after a successful reconcile of `revision`."""
    return {
        "lastAppliedRevision": revision,
        "lastAttemptedRevision": revision,
        "conditions": [ready("True", "ReconciliationSucceeded", f"Applied revision: {revision}", since)],
    }


def failed(revision: str, last_applied: str, reason: str = "HealthCheckFailed") -> dict[str, Any]:
    return {
        "lastAppliedRevision": last_applied,
        "lastAttemptedRevision": revision,
        "conditions": [ready("False", reason, "health check failed after 30s")],
    }


def git_repository(name: str, url: str, namespace: str = "flux-system") -> dict[str, Any]:
    return {
        "apiVersion": GIT_REPOSITORY.api_version,
        "kind": GIT_REPOSITORY.kind,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
        "spec": {"url": url, "ref": {"branch": "main"}, "interval": "1m"},
    }


def helm_release(
    name: str, namespace: str = "apps", *, status: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": HELM_RELEASE.api_version,
        "kind": HELM_RELEASE.kind,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}"},
        "spec": spec,
        "status": status or {},
    }


async def create(api: CustomObjectsApi, kind: FluxKind, obj: dict[str, Any]) -> None:
    namespace = obj["metadata"]["namespace"]
    await api.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, obj)


async def set_status(
    api: CustomObjectsApi, kind: FluxKind, namespace: str, name: str, status: dict[str, Any]
) -> None:
    """Replace the status as a controller's status patch would (kmock merges dicts, replaces lists)."""
    await api.patch_namespaced_custom_object_status(
        kind.group, kind.version, namespace, kind.plural, name, {"status": status}
    )
