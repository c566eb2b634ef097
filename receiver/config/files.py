"""What stops the service from starting although the configuration parses."""

from __future__ import annotations

from pathlib import Path

from receiver.config.models import Config
from receiver.secrets import secret_file_problem


def secret_files(config: Config) -> list[tuple[str, Path]]:
    """Every secret or trust file the configuration names, with its key (`webhook.hmac_keys[0]`)."""
    named: list[tuple[str, Path | None]] = []
    named += [(f"webhook.hmac_keys[{i}]", p) for i, p in enumerate(config.webhook.hmac_keys)]
    named += [(f"webhook.bearer_tokens[{i}]", p) for i, p in enumerate(config.webhook.bearer_tokens)]
    named += [(f"admin_tokens[{i}]", p) for i, p in enumerate(config.admin_tokens)]
    named.append(("journal_password_file", config.journal_password_file))
    for i, repo in enumerate(config.git.repositories):
        named += [(f"git.repositories[{i}].token_file", repo.token_file)]
        named += [(f"git.repositories[{i}].ssh_key_file", repo.ssh_key_file)]
        named += [(f"git.repositories[{i}].allowed_signers_file", repo.allowed_signers_file)]
    if config.kubernetes.enabled:
        named.append(("kubernetes.kubeconfig", config.kubernetes.kubeconfig))
    for name, inst in config.airflow.instances.items():
        for attr in ("username_file", "password_file", "token_file", "ca_file"):
            named.append((f"airflow.instances.{name}.{attr}", getattr(inst, attr)))
    return [(key, path) for key, path in named if path is not None]


def startup_problems(config: Config) -> list[str]:
    """Secret or trust files that are missing, unreadable, directories or blank, and no
    authentication at all, each naming its key."""
    problems = [
        f"{key}: {problem}"
        for key, path in secret_files(config)
        if (problem := secret_file_problem(path)) is not None
    ]
    if not config.webhook.allow_unauthenticated and not (
        config.webhook.hmac_keys or config.webhook.bearer_tokens
    ):
        problems.append("webhook: no hmac_keys and no bearer_tokens; set one, or allow_unauthenticated: true")
    return problems
