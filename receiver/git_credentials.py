"""How credentials reach the `git` command line, for the service's mirrors and the DAG side alike.

Standard library only: `receiver.dags` runs on Airflow workers without the service's
dependencies and imports this module as it imports `receiver.trailers`.

A password or token never appears on a command line, in an environment variable, in a
config file or in a log line. git asks a credential helper, configured through the
`GIT_CONFIG_*` environment (not argv), that is made of shell built-ins only and reads the
secret's file itself: the secret goes from the file through a pipe to git. Every other
credential helper is switched off for that command, so none (`store`, say) can keep the
secret. An SSH key stays in its file, named in `GIT_SSH_COMMAND`.

What differs between the two sides is a parameter, never a copy: which inherited `GIT_*`
variables are kept, the user name, whether the helper answers one origin or any remote, and
what SSH does with a host it does not know.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

USERNAME_VARIABLE = "FLUXBACK_GIT_USERNAME"
PASSWORD_FILE_VARIABLE = "FLUXBACK_GIT_PASSWORD_FILE"  # noqa: S105 - names a variable, holds a path

# Answers `get` with the user name and the first line of the password file, exactly. It runs as
# `sh -c '<helper> get'`, and `read` and `printf` are built-ins, so no process has the secret in
# its argv or environment.
CREDENTIAL_HELPER = (
    f'!f() {{ test "$1" = get || return 0; IFS= read -r password < "${PASSWORD_FILE_VARIABLE}";'
    f' printf "username=%s\\npassword=%s\\n" "${USERNAME_VARIABLE}" "$password"; }}; f'
)

# Variables that point git at another repository or configuration (`git rev-parse
# --local-env-vars`) or make it trace, and a trace can print credentials (GIT_TRACE_CURL).
REPOSITORY_VARIABLES = frozenset(
    {
        "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
        "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE",
        "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
        "GIT_SHALLOW_FILE", "GIT_COMMON_DIR", "GIT_INTERNAL_SUPER_PREFIX",
    }
)  # fmt: skip
_TRACING_PREFIXES = ("GIT_TRACE", "GIT_CURL_VERBOSE")

Inherit = Literal["nothing", "setup"]
"""Which `GIT_*` variables of the caller's environment git sees: `nothing` (the service: its
environment must not redirect or trace its fetches), or `setup` (an Airflow worker's own git
setup, such as `GIT_SSL_CAINFO`, `GIT_CONFIG_GLOBAL` or `GIT_SSH_COMMAND`, without the
variables that redirect git to another repository or trace it)."""


def git_environment(inherit: Inherit, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment for git, without prompts and with only the `GIT_*` variables
    `inherit` allows."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if not name.startswith("GIT_")
        or (
            inherit == "setup"
            and name not in REPOSITORY_VARIABLES
            and not name.startswith(_TRACING_PREFIXES)
            and not name.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
        )
    } | {"GIT_TERMINAL_PROMPT": "0"}


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL, without user info: what a credential is offered to."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def password_helper(username: str, password_file: Path, *, only_for: str | None) -> dict[str, str]:
    """Variables that make git answer a password prompt from `password_file`, sent with `username`.

    Args:
        username: sent with the password (hosts that take a token accept most names).
        password_file: its first line is the password or token.
        only_for: an `origin()`; the helper then answers that origin only. None answers any
            remote, for setups where the worker rewrites URLs (`url.<base>.insteadOf`).
    """
    # git collects every `credential.helper` and `credential.<url>.helper` that matches the remote,
    # in config order, and an empty value empties the list. The command scope is read last, so
    # the empty value drops the caller's helpers, URL-specific ones included, before this one.
    scoped = f"credential.{only_for}.helper" if only_for else "credential.helper"
    config = {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": scoped,
        "GIT_CONFIG_VALUE_1": CREDENTIAL_HELPER,
    }
    return config | {USERNAME_VARIABLE: username, PASSWORD_FILE_VARIABLE: str(password_file)}


def ssh_command(
    key_file: Path, known_hosts_file: Path | None = None, *, first_seen_hosts_file: Path | None = None
) -> str:
    """`GIT_SSH_COMMAND` that uses `key_file` only and never prompts.

    Host keys are checked strictly against `known_hosts_file` when given; otherwise, with
    `first_seen_hosts_file`, the first key seen for a host is trusted and kept there; otherwise
    ssh's own known_hosts files and settings apply.
    """
    command = ["ssh", "-i", str(key_file), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    checking, hosts = ("yes", known_hosts_file) if known_hosts_file else ("accept-new", first_seen_hosts_file)
    if hosts is not None:
        command += ["-o", f"StrictHostKeyChecking={checking}", "-o", f"UserKnownHostsFile={hosts}"]
    return shlex.join(command)
