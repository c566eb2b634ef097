"""What stops the service from starting although the configuration parses."""

from __future__ import annotations

import os
from pathlib import Path

from receiver.config.models import Config


def startup_problems(config: Config) -> list[str]:
    """Unreadable secret or trust files, and no authentication at all, each naming its key."""
    named: list[tuple[str, Path | None]] = []
    named += [(f"webhook.hmac_keys[{i}]", p) for i, p in enumerate(config.webhook.hmac_keys)]
    named += [(f"webhook.bearer_tokens[{i}]", p) for i, p in enumerate(config.webhook.bearer_tokens)]
    named += [(f"admin_tokens[{i}]", p) for i, p in enumerate(config.admin_tokens)]
    for i, repo in enumerate(config.git.repositories):
        named += [(f"git.repositories[{i}].token_file", repo.token_file)]
        named += [(f"git.repositories[{i}].ssh_key_file", repo.ssh_key_file)]
        named += [(f"git.repositories[{i}].allowed_signers_file", repo.allowed_signers_file)]
    if config.kubernetes.enabled:
        named.append(("kubernetes.kubeconfig", config.kubernetes.kubeconfig))
    for name, inst in config.airflow.instances.items():
        for attr in ("username_file", "password_file", "token_file", "ca_file"):
            named.append((f"airflow.instances.{name}.{attr}", getattr(inst, attr)))
    problems = [
        f"{key}: cannot read file {file}"
        for key, file in named
        if file is not None and (not os.access(file, os.R_OK) or not file.is_file())
    ]
    if not config.webhook.allow_unauthenticated and not (
        config.webhook.hmac_keys or config.webhook.bearer_tokens
    ):
        problems.append("webhook: no hmac_keys and no bearer_tokens; set one, or allow_unauthenticated: true")
    return problems
