"""Clone, change, commit and push a GitOps repository with the `git` command line.

Why the `git` CLI and not a library: it is on every Airflow worker image (Airflow's
own git DAG bundles need it), it speaks every transport and credential setup the
worker already has (proxies, CA bundles, `url.insteadOf`, SSH), and it avoids
adding a compiled dependency such as pygit2 to Airflow's environment.

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

A push rejected as non-fast-forward (someone pushed in between) is retried on the
new tip: the work tree is reset to the fetched tip and the change is applied
again, then committed and pushed. Re-applying the change, rather than `git
rebase` of the finished commit, never stops at a conflict when two runs edit the
same lines (two DAGs bumping neighbouring tags), and when the other push already
made the same change, the retry finds nothing to commit. Changes must therefore
be functions of the work tree (set this value, revert that commit), which the
ready-made ones are.

A retried Airflow task is safe too: when nothing changes but a recent commit on
the branch has the very same message, that commit is reported as the one carrying
the change, so a sensor still waits for its deploy. Messages made with
`add_airflow_trailers` name the run and, once the run has been cleared, how often
(`Fluxback-Clear-Number`), so only a try since the last clear can match: a cleared
run does not mistake its own commit of days ago for one to wait for again.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from receiver.git_credentials import git_environment, password_helper, ssh_command

log = logging.getLogger(__name__)

DEFAULT_HTTPS_USERNAME = "x-access-token"
"""Sent when a token is given without a user name; GitHub and most hosts accept any name with a token."""

_SSH_SCHEMES = ("ssh", "git+ssh", "ssh+git")


RECENT_COMMITS = 100
"""How far back a commit with the very same message counts as this change, already pushed."""


class GitPushError(RuntimeError):
    """A git command failed; the message has the command (never credentials) and git's own words."""


class PushRejected(GitPushError):
    """Every push attempt was rejected because the branch moved; the message says how often."""


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


@dataclass(frozen=True, kw_only=True)
class GitIdentity:
    """Author or committer of the commits made."""

    name: str = "Airflow"
    email: str = "airflow@localhost"


@dataclass(frozen=True, kw_only=True)
class PushResult:
    """What a commit-and-push did; `as_xcom()` is what the commit task returns."""

    repository: str
    branch: str
    commit: str
    """The commit pushed, or the branch tip when there was nothing to commit."""
    committed: bool
    """A commit carries the change: made now, or found among the branch's recent commits with the very
    same message (an earlier try of the same task pushed it, then failed or was retried). False means
    git already had the change, not that it is deployed: another run may have pushed it and still wait."""
    attempts: int
    """Push attempts made (0 when nothing was committed at the first try)."""

    @property
    def revision(self) -> str:
        """The commit as Flux writes a Git revision (`main@sha1:<sha>`)."""
        return f"{self.branch}@sha1:{self.commit}"

    def as_xcom(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "commit": self.commit,
            "committed": self.committed,
            "repository": self.repository,
            "branch": self.branch,
        }


class WorkTree(os.PathLike[str]):
    """The checked-out work tree a change edits: a path (`tree / "apps/x.yaml"`) plus `git(...)` in it."""

    def __init__(self, path: Path, run: Callable[..., str]) -> None:
        self.path = path
        self._run = run

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, relative: str | os.PathLike[str]) -> Path:
        return self.path / relative

    def git(self, *args: str) -> str:
        """Run `git <args>` in the work tree with the session's credentials; returns stdout."""
        return self._run(*args)

    def file(self, relative: str | os.PathLike[str]) -> Path:
        """`relative` inside the work tree; refuses paths that leave it (`..`, absolute, symlinks out)."""
        target = (self.path / relative).resolve()
        if not target.is_relative_to(self.path.resolve()):
            raise ValueError(f"{os.fspath(relative)!r} is outside the repository's work tree")
        return target


Change = Callable[[WorkTree], object]
"""Edits the work tree in place; its return value is ignored."""


def commit_and_push(
    repository: str,
    *,
    change: Change | Sequence[Change],
    message: str,
    branch: str = "main",
    auth: GitAuth | None = None,
    author: GitIdentity | None = None,
    committer: GitIdentity | None = None,
    workdir: str | os.PathLike[str] | None = None,
    attempts: int = 5,
    timeout: float = 300.0,
) -> PushResult:
    """Check out `branch`, apply `change`, and commit and push it when it changed anything.

    Retrying is safe: when the change is already on the branch and one of its last
    `RECENT_COMMITS` commits has exactly this message, that commit is returned as the one
    carrying the change. Messages made with `add_airflow_trailers` (as `push_change` does) name
    the run and its clear number, so only an earlier try of the same task since the run's last
    clear matches; a message of your own must be as unique, or an older commit is taken for this one.

    Args:
        repository: the remote URL (`https://...`, `ssh://...`, `git@host:path`, `file://...`).
        change: one or more callables that edit the work tree, applied in order.
        message: the full commit message, trailers included.
        branch: the branch to commit to.
        auth: credentials; None uses whatever the worker's git is set up with.
        author: the commit author (default `Airflow <airflow@localhost>`).
        committer: the committer; the author when None.
        workdir: a directory to keep the clone in and reuse (fetched and reset on each use, so
            one task at a time); None clones into a temporary directory removed afterwards.
        attempts: pushes to try while the branch keeps moving under us.
        timeout: seconds any single git command may take.

    Raises:
        GitPushError: a git command failed (clone, fetch, commit, push refused by the server).
        PushRejected: the branch moved before every one of `attempts` pushes.
        ValueError: the URL carries user info (other than an SSH user name), or `attempts` is below 1.
    """
    _refuse_credentials_in(repository)
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    changes = [change] if callable(change) else list(change)
    author = author or GitIdentity()
    committer = committer or author
    identity = {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": committer.name,
        "GIT_COMMITTER_EMAIL": committer.email,
    }
    with ExitStack() as stack:
        env = stack.enter_context(_git_environment(auth or GitAuth()))
        if workdir is None:
            tree = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxback-git-"))) / "repo"
        else:
            tree = Path(workdir)

        def git(*args: str) -> str:
            return _run(["git", *args], tree, env, timeout)

        _check_out(repository, branch, tree, env, timeout)
        work = WorkTree(tree, git)
        stored_message = _run(["git", "stripspace"], tree, env, timeout, message)  # as `git commit` keeps it
        refusal = None
        for attempt in range(1, attempts + 1):
            for apply in changes:
                apply(work)
            git("add", "--all")
            if not git("status", "--porcelain", "--untracked-files=no").strip():
                return _unchanged(git, stored_message, repository, branch, attempt - 1)
            commit = ["git", "commit", "--quiet", "--no-verify", "--cleanup=whitespace", "--file=-"]
            _run(commit, tree, {**env, **identity}, timeout, message)
            sha = git("rev-parse", "HEAD").strip()
            refusal = _push(git, branch)
            if refusal is None:
                log.info("pushed %s to %s %s (attempt %d)", sha, repository, branch, attempt)
                return PushResult(
                    repository=repository, branch=branch, commit=sha, committed=True, attempts=attempt
                )
            log.info("push of %s rejected: %s moved; applying the change again on the new tip", sha, branch)
            _reset_to_remote(git, branch)
    raise PushRejected(
        f"pushing to {repository} {branch} was rejected {attempts} times because the branch kept"
        f" moving; the last refusal: {refusal}"
    )


def _refuse_credentials_in(repository: str) -> None:
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
def _git_environment(auth: GitAuth) -> Iterator[dict[str, str]]:
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


def _check_out(repository: str, branch: str, tree: Path, env: Mapping[str, str], timeout: float) -> None:
    """Clone into `tree`, or fetch and reset an existing clone there, leaving a clean `branch` tip."""
    if (tree / ".git").is_dir():
        _run(["git", "remote", "set-url", "origin", repository], tree, env, timeout)
        _reset_to_remote(lambda *args: _run(["git", *args], tree, env, timeout), branch)
        return
    tree.parent.mkdir(parents=True, exist_ok=True)
    # History without file contents: enough to revert an earlier commit, cheap for big histories.
    clone = ["git", "clone", "--quiet", "--no-tags", "--single-branch", "--filter=blob:none"]
    _run([*clone, f"--branch={branch}", "--", repository, str(tree)], tree.parent, env, timeout)


def _reset_to_remote(git: Callable[..., str], branch: str) -> None:
    git("fetch", "--quiet", "--no-tags", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
    git("checkout", "--quiet", "--force", "-B", branch, f"refs/remotes/origin/{branch}")
    git("clean", "--quiet", "-ffdx")


def _unchanged(
    git: Callable[..., str], stored_message: str, repository: str, branch: str, attempts: int
) -> PushResult:
    """The result when the change changed nothing: already pushed by an earlier try, or already there."""
    earlier = _commit_with_message(git, stored_message)
    if earlier is not None:
        log.info("%s %s already has this commit (%s): an earlier try pushed it", repository, branch, earlier)
        return PushResult(
            repository=repository, branch=branch, commit=earlier, committed=True, attempts=attempts
        )
    tip = git("rev-parse", "HEAD").strip()
    log.info("nothing to commit: %s %s already has the change at %s", repository, branch, tip)
    return PushResult(repository=repository, branch=branch, commit=tip, committed=False, attempts=attempts)


def _commit_with_message(git: Callable[..., str], message: str) -> str | None:
    """The newest of the last `RECENT_COMMITS` commits whose message is `message` (as git stored it)."""
    wanted = message.strip()
    log_text = git("log", f"--max-count={RECENT_COMMITS}", "--format=%H%n%B%x00")
    for entry in log_text.split("\0"):
        sha, _, body = entry.strip("\n").partition("\n")
        if sha and body.strip() == wanted:
            return sha
    return None


def _push(git: Callable[..., str], branch: str) -> str | None:
    """Push HEAD to `branch`: None when done, git's words if the branch moved; GitPushError otherwise."""
    try:
        git("push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}")
    except _PushFailed as failure:
        if failure.branch_moved:
            return str(failure)
        raise GitPushError(str(failure)) from None
    return None


# How a push whose branch moved is refused: by the client ([rejected]) when it fetched the new tip
# first, or by the server ([remote rejected]) when another push updated the ref at the same moment.
_BRANCH_MOVED = (
    "fetch first",
    "non-fast-forward",
    "failed to update ref",
    "cannot lock ref",
    "incorrect old value",
)


class _PushFailed(GitPushError):
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
            raise _PushFailed(message, done.stdout)
        raise GitPushError(message)
    return done.stdout
