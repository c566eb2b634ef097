"""Run the `git` command line for a DAG task: with its credentials, and failing without showing them.

Credentials never appear on a command line, in an environment, in `.git/config`
or in logs. The HTTPS token is written to a private temporary file, and git gets
it from a credential helper of shell built-ins that reads that file; the worker's
own credential helpers are switched off for the push, so none (`store`, say) can
save the token. An SSH key is a private temporary file named in `GIT_SSH_COMMAND`.
Both files are deleted afterwards. `receiver.git_credentials`, shared with the
service, builds git's environment: the worker's git setup (`GIT_SSL_CAINFO`, its
gitconfig) applies, but inherited variables that would point git at another
repository or trace it (a trace can print the token) are dropped. A repository
URL with user info (`https://token@host/...`) is refused, because the URL reaches
XCom, logs and error messages; only an SSH user name (`ssh://git@host/...`) is
allowed.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from receiver.git_credentials import git_environment, password_helper, ssh_command

DEFAULT_HTTPS_USERNAME = "x-access-token"
"""Sent when a token is given without a user name; GitHub and most hosts accept any name with a token."""

_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")


class GitPushError(RuntimeError):
    """A git command failed; the message has the command (never credentials) and git's own words."""


@dataclass(frozen=True, kw_only=True)
class GitAuth:
    """How to authenticate to the remote; empty means the worker's own git setup."""

    username: str | None = None
    """HTTPS user name; defaults to `DEFAULT_HTTPS_USERNAME` when only a password is given."""
    password: str | None = field(default=None, repr=False)
    """HTTPS password or access token."""
    ssh_private_key: str | None = field(default=None, repr=False)
    """An SSH private key (the text of the key file) for `ssh://` and `git@host:path` URLs."""
    ssh_known_hosts: str | None = None
    """`known_hosts` lines for the Git server; without them the worker's known_hosts must have it."""

    @classmethod
    def from_connection(cls, connection: Any) -> GitAuth:
        """From an Airflow Connection: login + password (HTTPS), extra `private_key` + `known_hosts` (SSH)."""
        extra: Mapping[str, Any] = getattr(connection, "extra_dejson", None) or {}
        return cls(
            username=connection.login or None,
            password=connection.password or None,
            ssh_private_key=extra.get("private_key") or None,
            ssh_known_hosts=extra.get("known_hosts") or None,
        )


def refuse_credentials_in(repository: str) -> None:
    """Refuse a URL with user info: a token there would reach XCom, logs and error messages.

    `https://ghp_xxx@host/...` is a token without a password, so any user info is refused,
    except a user name in an SSH URL (`ssh://git@host/...`), which is not a secret.
    """
    parts = urlsplit(repository)
    if parts.password is not None or (parts.username is not None and parts.scheme not in _SSH_SCHEMES):
        raise ValueError(
            "the repository URL has user info (`user@` or `user:password@`), which would be shown in"
            " XCom, logs and errors; put credentials in the Airflow Connection's login and password"
        )


@contextmanager
def credentials_environment(auth: GitAuth) -> Iterator[dict[str, str]]:
    """The environment for git: never prompt, and the credentials of `auth` in files deleted afterwards."""
    env = git_environment("setup")
    if not (auth.password or auth.ssh_private_key):
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="fluxback-git-secrets-") as secrets:  # mode 0700
        if auth.password:
            password = _private_file(Path(secrets) / "password", auth.password + "\n")
            # Any remote: the worker may rewrite the URL (url.<base>.insteadOf).
            username = auth.username or DEFAULT_HTTPS_USERNAME
            env |= password_helper(username, password, only_for=None)
        if auth.ssh_private_key:
            key = _private_file(Path(secrets) / "key", auth.ssh_private_key.strip() + "\n")
            known_hosts = None
            if auth.ssh_known_hosts:
                hosts_text = auth.ssh_known_hosts.strip() + "\n"
                known_hosts = _private_file(Path(secrets) / "known_hosts", hosts_text)
            env["GIT_SSH_COMMAND"] = ssh_command(key, known_hosts)
        yield env


def _private_file(path: Path, text: str) -> Path:
    """`text` in a file created with mode 0600, so it is never readable by others, not even for a moment."""
    path.touch(mode=0o600)
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Git:
    """`git` in one directory, with one environment and time limit: what every command of a push shares."""

    cwd: Path
    env: Mapping[str, str]
    timeout: float
    """Seconds any single command may take."""

    def __call__(self, *args: str, stdin: str | None = None, env: Mapping[str, str] | None = None) -> str:
        """Run `git <args>`, with `env` added to the shared environment; returns stdout."""
        return _run(["git", *args], self.cwd, {**self.env, **(env or {})}, self.timeout, stdin)


# How a push whose branch moved is refused: by the client ([rejected]) when it fetched the new tip
# first, or by the server ([remote rejected]) when another push updated the ref at the same moment.
_BRANCH_MOVED = (
    "fetch first",
    "non-fast-forward",
    "failed to update ref",
    "cannot lock ref",
    "incorrect old value",
)


class PushFailed(GitPushError):
    """`git push` failed; `branch_moved` tells a refusal because the branch moved from any other failure."""

    def __init__(self, message: str, stdout: str) -> None:
        super().__init__(message)
        # `--porcelain` prints one line per ref: "!<TAB>HEAD:refs/heads/main<TAB>[rejected] (fetch first)".
        self.branch_moved = any(
            line.startswith("!") and any(reason in line for reason in _BRANCH_MOVED)
            for line in stdout.splitlines()
        )


def _run(
    command: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float, stdin: str | None = None
) -> str:
    """Run `command`; its stdout, or a GitPushError (PushFailed for a push) with git's own words."""
    try:
        done = subprocess.run(
            list(command),
            cwd=cwd,
            env=dict(env),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise GitPushError(f"{shlex.join(command)} took longer than {timeout:.0f} s") from error
    except FileNotFoundError as error:
        raise GitPushError(
            "the git command line is not installed on this worker (it must be on PATH)"
        ) from error
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-2000:]
        message = f"{shlex.join(command)} failed (exit {done.returncode}): {output}"
        if command[1:2] == ["push"]:
            raise PushFailed(message, done.stdout)
        raise GitPushError(message)
    return done.stdout
