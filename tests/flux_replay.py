"""Play Flux's notification-controller in tests: the exact bytes and headers it sends.

A `generic-hmac` provider POSTs compact JSON in Go's `encoding/json` form (no spaces, map
keys sorted, `<>&` escaped) with `X-Signature: sha256=<HMAC of the exact body>`; a `generic`
provider sends the Secret's `headers` instead, which is how a bearer token arrives.
The payload files under `fixtures/flux/` are events as notification-controller forwards them,
in that compact form; they end with a newline for editors, which `payload` removes.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import aiohttp

FIXTURES = Path(__file__).parent / "fixtures" / "flux"
USER_AGENT = "Go-http-client/1.1"

EXAMPLES = (
    "a_kustomization_reconciliation_succeeded",
    "b_kustomization_progressing",
    "c_kustomization_health_check_failed",
    "d_helmrelease_upgrade_succeeded",
    "e_helmrelease_upgrade_failed",
    "f_gitrepository_new_artifact",
    "g_ocirepository_new_artifact",
    "g_kustomization_from_oci",
)
"""The payloads A-G under fixtures/flux/ (G with the Kustomization that applies the OCI artifact)."""


def payload(name: str) -> bytes:
    """The exact body Flux sends for the fixture `name` (without the file's final newline)."""
    return (FIXTURES / f"{name}.json").read_bytes().removesuffix(b"\n")


def go_json(value: Any) -> bytes:
    """Encode like Go's `json.Marshal`: compact, insertion order, HTML characters escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode("utf-8")


def event_body(
    *,
    kind: str = "Kustomization",
    namespace: str = "flux-system",
    name: str = "apps",
    severity: str = "info",
    reason: str = "ReconciliationSucceeded",
    message: str = "Reconciliation finished in 1.2s, next run in 10m0s",
    revision: str | None = "main@sha1:3b9f1c2a7d4e5f60718293a4b5c6d7e8f9012345",
    timestamp: str = "2026-08-10T09:15:42Z",
    metadata: dict[str, str] | None = None,
) -> bytes:
    """A compact event as Flux would send it, for tests that need many different events."""
    groups = {"Kustomization": "kustomize", "HelmRelease": "helm"}
    api_version = f"{groups.get(kind, 'source')}.toolkit.fluxcd.io/v1"
    meta = dict(metadata or {})
    if revision is not None:
        meta["revision"] = revision
    event: dict[str, Any] = {
        "involvedObject": {"kind": kind, "namespace": namespace, "name": name, "apiVersion": api_version},
        "severity": severity,
        "timestamp": timestamp,
        "message": message,
        "reason": reason,
    }
    if meta:
        event["metadata"] = dict(sorted(meta.items()))
    event["reportingController"] = "kustomize-controller"
    return go_json(event)


def sign(body: bytes, key: bytes, algorithm: str = "sha256") -> str:
    """The `X-Signature` value for `body` under `key`."""
    return f"{algorithm}={hmac.new(key, body, algorithm).hexdigest()}"


def flux_headers(body: bytes, *, hmac_key: bytes | None = None, bearer: str | None = None) -> dict[str, str]:
    """Headers of a Flux delivery: signed when `hmac_key` is given, with a bearer token when `bearer` is."""
    try:
        controller = str(json.loads(body).get("reportingController", ""))
    except (ValueError, AttributeError):  # tests also send bodies that are not events
        controller = ""
    headers = {
        "Content-Type": "application/json",
        "Gotk-Component": controller,
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "gzip",
    }
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if hmac_key is not None:
        headers["X-Signature"] = sign(body, hmac_key)
    return headers


async def post_event(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    hmac_key: bytes | None = None,
    bearer: str | None = None,
) -> tuple[int, Any]:
    """POST one event the way Flux does; returns the status and the decoded JSON answer."""
    headers = flux_headers(body, hmac_key=hmac_key, bearer=bearer)
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()
