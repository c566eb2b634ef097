"""The git CLI as a subprocess: the partial `git fetch` that fills a mirror, and `verify-commit`.

libgit2 cannot do a partial fetch: with `--filter=blob:none` the mirror holds commits and trees
only, and a large repository's file contents are never downloaded. A server that does not
support filters gets the full fetch (git falls back by itself).

The token never reaches a command line, an environment variable, a log line or an exception;
`receiver.git_credentials` (shared with the DAG side) builds git's environment:
- HTTPS token (`token_file`): a credential helper of shell built-ins reads the file and answers
  the repository's scheme://host[:port] only; no other helper can store the token.
  `FileSecret` checks the file first (a clear error naming the file) and supplies the value to
  scrub from git's messages.
- SSH key (`ssh_key_file`, optional `ssh_known_hosts_file`): `GIT_SSH_COMMAND` names the files;
  without a known_hosts file the first host key seen is trusted and kept in the cache directory.
All inherited `GIT_*` variables are dropped, so the caller's environment cannot redirect git.
Messages pass through `_scrub`, which removes URL userinfo and the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import structlog

from receiver.config import GitRepository
from receiver.git.errors import TemporaryMirrorError
from receiver.git_credentials import git_environment, origin, password_helper, ssh_command
from receiver.secrets import FileSecret, SecretUnavailable

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_STDERR_CHARS = 500
log = structlog.get_logger(__name__)


def fetch_environment(
    repository: GitRepository, token_file: FileSecret | None, first_seen_hosts_file: Path
) -> tuple[dict[str, str], list[str]]:
    """git's environment for this repository's fetches, and the secret values to scrub from its output.

    Raises:
        TemporaryMirrorError: the token file cannot be read (the message names the file only).
    """
    # LC_ALL=C: git's messages are shown to operators and matched in tests, in English.
    env = git_environment("nothing") | {"GIT_ASKPASS": "", "LC_ALL": "C"}
    secrets: list[str] = []
    if token_file is not None:
        try:
            token = token_file.read_text()
        except SecretUnavailable as error:
            raise TemporaryMirrorError(f"{repository.name}: {error}") from None
        if not token:
            raise TemporaryMirrorError(f"{repository.name}: token file {token_file.path} is empty")
        secrets.append(token)
        env |= password_helper(repository.username, token_file.path, only_for=origin(repository.url))
    if repository.ssh_key_file is not None:
        env["GIT_SSH_COMMAND"] = ssh_command(
            repository.ssh_key_file,
            repository.ssh_known_hosts_file,
            first_seen_hosts_file=first_seen_hosts_file,
        )
    return env, secrets


async def fetch(
    name: str, git_dir: Path, action: str, env: dict[str, str], secrets: Iterable[str], timeout_seconds: float
) -> None:
    """Run one `git fetch` of every ref, without blobs, within the fetch timeout.

    Raises:
        TemporaryMirrorError: git failed or timed out; the message has git's last words, scrubbed.
    """
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "git",
        f"--git-dir={git_dir}",
        "fetch",
        "--quiet",
        "--prune",
        "--no-write-fetch-head",
        "--filter=blob:none",
        "origin",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,  # a timeout kills git and its helpers as one process group
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_seconds)
    except TimeoutError:
        raise _failed(name, action, f"timed out after {timeout_seconds:g} s", started) from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    if process.returncode != 0:
        detail = stderr.decode(errors="replace").strip()[-_STDERR_CHARS:]
        raise _failed(name, action, _scrub(detail, secrets) or f"exit code {process.returncode}", started)
    log.info("git.fetched", repository=name, action=action, seconds=round(time.monotonic() - started, 3))


async def signature_problem(git_dir: Path, allowed_signers_file: Path, sha: str) -> str | None:
    """Why git's `verify-commit` does not accept the commit's signature, or None when it does."""
    env = git_environment("nothing") | {"LC_ALL": "C"}
    process = await asyncio.create_subprocess_exec(
        "git",
        f"--git-dir={git_dir}",
        "-c",
        f"gpg.ssh.allowedSignersFile={allowed_signers_file}",
        "verify-commit",
        sha,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    output, _ = await process.communicate()
    if process.returncode == 0:
        return None
    lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][-_STDERR_CHARS:] if lines else "commit has no signature"  # git says nothing then


def _failed(name: str, action: str, detail: str, started: float) -> TemporaryMirrorError:
    seconds = round(time.monotonic() - started, 3)
    log.warning("git.fetch_failed", repository=name, action=action, seconds=seconds, error=detail)
    return TemporaryMirrorError(f"{name}: git {action} failed: {detail}")


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove URL userinfo and known secret values from text meant for logs and exceptions."""
    text = _USERINFO.sub("***@", text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
