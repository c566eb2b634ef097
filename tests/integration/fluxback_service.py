"""Fluxback as it runs in production, for end-to-end tests: a subprocess with a real config,
a real journal, real git mirrors and the test session's real Airflow."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.flux_replay import event_body, post_event
from tests.gitops import GitOpsRepo
from tests.helpers import free_port
from tests.integration.airflow_harness import AirflowServer

REPO_ROOT = Path(__file__).resolve().parents[2]
HMAC_KEY = b"integration-hmac-key"
ADMIN_TOKEN = "integration-admin-token"


@dataclass
class FluxbackService:
    """One running Fluxback subprocess and the calls tests need against it."""

    root: Path
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "fluxback.log"

    def start(self, timeout: float = 30.0) -> None:
        config = {**self.config, "listen": f"127.0.0.1:{self.port}"}
        config_path = self.root / "fluxback.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXBACK_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "receiver", "serve", "--config", str(config_path)],
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fluxback exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fluxback not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def post(self, body: bytes) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            return await post_event(session, f"{self.url}/flux/events", body, hmac_key=HMAC_KEY)

    async def report(
        self,
        sha: str,
        *,
        name: str = "apps",
        reason: str = "ReconciliationSucceeded",
        severity: str = "info",
        message: str = "Reconciliation finished in 2.1s, next run in 10m0s",
        metadata: dict[str, str] | None = None,
        timestamp: str | None = None,
    ) -> int:
        """Play Flux: the Kustomization `name` reports `reason` for revision `main@sha1:<sha>`."""
        body = event_body(
            name=name,
            reason=reason,
            severity=severity,
            message=message,
            revision=GitOpsRepo.revision(sha),
            timestamp=timestamp or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            metadata=metadata,
        )
        status, answer = await self.post(body)
        assert status == 202, (status, answer)
        return int(answer["id"])

    async def get(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}{path}", params=params) as answer,
        ):
            assert answer.status == 200, (answer.status, await answer.text())
            return await answer.json()

    async def metrics_text(self) -> str:
        """GET /metrics as Prometheus scrapes it."""
        async with aiohttp.ClientSession() as session, session.get(f"{self.url}/metrics") as answer:
            assert answer.status == 200, answer.status
            return await answer.text()

    async def wait_delivery(
        self, delivery_id: int, states: Sequence[str] = ("done", "dead"), within: float = 60.0
    ) -> dict[str, Any]:
        """The delivery once it reaches one of `states` (JSON of GET /deliveries/{id})."""
        deadline = time.monotonic() + within
        delivery: dict[str, Any] = {}
        while time.monotonic() < deadline:
            delivery = await self.get(f"/deliveries/{delivery_id}")
            if delivery["state"] in states:
                return delivery
            await asyncio.sleep(0.3)
        raise AssertionError(f"delivery {delivery_id} still {delivery.get('state')}: {json.dumps(delivery)}\n"
                             f"{self.log_tail()}")  # fmt: skip


def fluxback_config(
    root: Path,
    *,
    airflow: AirflowServer,
    repo: GitOpsRepo,
    policy: list[dict[str, Any]] | None = None,
    rules: list[dict[str, Any]] | None = None,
    worker: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A production-shaped config: secrets in files, the repo mapped to two Kustomizations."""
    secrets = root / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    files = {
        "hmac": HMAC_KEY + b"\n",  # written like `echo key > file`: Flux >= 2.7 keeps the newline
        "admin": ADMIN_TOKEN.encode(),
        "airflow-user": airflow.username.encode(),
        "airflow-password": airflow.password.encode(),
    }
    for name, content in files.items():
        (secrets / name).write_bytes(content)
    return {
        "cluster": "test",
        "journal": f"sqlite:///{root / 'journal.db'}",
        "webhook": {"hmac_keys": [str(secrets / "hmac")]},
        "admin_tokens": [str(secrets / "admin")],
        "git": {
            "cache_dir": str(root / "git-cache"),
            "repositories": [{"name": "flux-system/flux-system", "url": repo.url}],
            "objects": [kustomization("apps"), kustomization("infra")],
        },
        "airflow": {
            "instances": {
                "default": {
                    "url": airflow.url,
                    "username_file": str(secrets / "airflow-user"),
                    "password_file": str(secrets / "airflow-password"),
                    "timeout_seconds": 5,
                }
            }
        },
        "policy": policy
        if policy is not None
        else [{"match": {"kind": "Kustomization", "namespace": "flux-system"}, "dags": ["fluxback_*"]}],
        "rules": rules or [],
        "worker": {"poll_interval_seconds": 0.2, "retry_initial_seconds": 1, "retry_max_seconds": 3}
        | (worker or {}),
        "log": {"format": "json", "level": "debug"},
    }


def kustomization(name: str) -> dict[str, str]:
    """Kustomization flux-system/<name> applies ./<name> of the test repository."""
    return {
        "kind": "Kustomization",
        "namespace": "flux-system",
        "name": name,
        "repository": "flux-system/flux-system",
        "path": f"./{name}",
    }
