"""Clone, change, commit and push a GitOps repository with the `git` command line.

Why the `git` CLI and not a library: it is on every Airflow worker image (Airflow's
own git DAG bundles need it), it speaks every transport and credential setup the
worker already has (proxies, CA bundles, `url.insteadOf`, SSH), and it avoids
adding a compiled dependency such as pygit2 to Airflow's environment.

Credentials, and running git without ever showing them, are `receiver.dags.git_command`.

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
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from receiver.dags.git_command import (
    DEFAULT_HTTPS_USERNAME,
    Git,
    GitAuth,
    GitPushError,
    PushFailed,
    credentials_environment,
    refuse_credentials_in,
)

__all__ = [
    "DEFAULT_HTTPS_USERNAME",
    "RECENT_COMMITS",
    "Change",
    "GitAuth",
    "GitIdentity",
    "GitPushError",
    "PushRejected",
    "PushResult",
    "WorkTree",
    "commit_and_push",
]

log = logging.getLogger(__name__)

RECENT_COMMITS = 100
"""How far back a commit with the very same message counts as this change, already pushed."""


class PushRejected(GitPushError):
    """Every push attempt was rejected because the branch moved; the message says how often."""


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
    `RECENT_COMMITS` commits has exactly this message, that commit is returned as carrying it.
    `add_airflow_trailers` (as `push_change` uses it) makes a message unique to a try since the
    run's last clear; a message of your own must be as unique, or an older commit is taken for this one.

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
    refuse_credentials_in(repository)
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    author = author or GitIdentity()
    changes = [change] if callable(change) else list(change)
    job = _CommitJob(repository, branch, changes, message, _identity_environment(author, committer or author))
    with ExitStack() as stack:
        env = stack.enter_context(credentials_environment(auth or GitAuth()))
        git = Git(_clone_directory(stack, workdir), env, timeout)
        _check_out(git, repository, branch)
        return _commit_until_pushed(git, job, attempts)


@dataclass(frozen=True)
class _CommitJob:
    """What every attempt commits, and where to."""

    repository: str
    branch: str
    changes: Sequence[Change]
    message: str
    identity: Mapping[str, str]
    """`GIT_AUTHOR_*` and `GIT_COMMITTER_*` for `git commit`."""


def _identity_environment(author: GitIdentity, committer: GitIdentity) -> dict[str, str]:
    """Author and committer as `git commit` reads them, so the worker's gitconfig needs no `user.*`."""
    return {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": committer.name,
        "GIT_COMMITTER_EMAIL": committer.email,
    }


def _clone_directory(stack: ExitStack, workdir: str | os.PathLike[str] | None) -> Path:
    """`workdir`, or a directory in a temporary one that `stack` removes when it closes."""
    if workdir is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fluxback-git-"))) / "repo"
    return Path(workdir)


def _check_out(git: Git, repository: str, branch: str) -> None:
    """Clone into `git.cwd`, or fetch and reset an existing clone there, leaving a clean `branch` tip."""
    tree = git.cwd
    if (tree / ".git").is_dir():
        git("remote", "set-url", "origin", repository)
        _reset_to_remote(git, branch)
        return
    tree.parent.mkdir(parents=True, exist_ok=True)
    # History without file contents: enough to revert an earlier commit, cheap for big histories.
    clone = ["clone", "--quiet", "--no-tags", "--single-branch", "--filter=blob:none"]
    replace(git, cwd=tree.parent)(*clone, f"--branch={branch}", "--", repository, str(tree))


def _commit_until_pushed(git: Git, job: _CommitJob, attempts: int) -> PushResult:
    """Apply, commit and push; when the branch moved meanwhile, start again from its new tip."""
    work = WorkTree(git.cwd, git)
    stored_message = git("stripspace", stdin=job.message)  # as `git commit` keeps it
    refusal = None
    for attempt in range(1, attempts + 1):
        sha = _commit(work, git, job)
        if sha is None:
            return _unchanged(git, job, stored_message, attempt - 1)
        refusal = _push(git, job.branch)
        if refusal is None:
            log.info("pushed %s to %s %s (attempt %d)", sha, job.repository, job.branch, attempt)
            return PushResult(
                repository=job.repository, branch=job.branch, commit=sha, committed=True, attempts=attempt
            )
        log.info("push of %s rejected: %s moved; applying the change again on the new tip", sha, job.branch)
        _reset_to_remote(git, job.branch)
    raise PushRejected(
        f"pushing to {job.repository} {job.branch} was rejected {attempts} times because the branch kept"
        f" moving; the last refusal: {refusal}"
    )


def _commit(work: WorkTree, git: Git, job: _CommitJob) -> str | None:
    """Apply the changes and commit what they changed: the new commit, or None when nothing changed."""
    for apply in job.changes:
        apply(work)
    git("add", "--all")
    if not git("status", "--porcelain", "--untracked-files=no").strip():
        return None
    commit = ["commit", "--quiet", "--no-verify", "--cleanup=whitespace", "--file=-"]
    git(*commit, stdin=job.message, env=job.identity)
    return git("rev-parse", "HEAD").strip()


def _reset_to_remote(git: Git, branch: str) -> None:
    git("fetch", "--quiet", "--no-tags", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
    git("checkout", "--quiet", "--force", "-B", branch, f"refs/remotes/origin/{branch}")
    git("clean", "--quiet", "-ffdx")


def _unchanged(git: Git, job: _CommitJob, stored_message: str, attempts: int) -> PushResult:
    """The result when the change changed nothing: already pushed by an earlier try, or already there."""
    repository, branch = job.repository, job.branch
    earlier = _commit_with_message(git, stored_message)
    if earlier is not None:
        log.info("%s %s already has this commit (%s): an earlier try pushed it", repository, branch, earlier)
        return PushResult(
            repository=repository, branch=branch, commit=earlier, committed=True, attempts=attempts
        )
    tip = git("rev-parse", "HEAD").strip()
    log.info("nothing to commit: %s %s already has the change at %s", repository, branch, tip)
    return PushResult(repository=repository, branch=branch, commit=tip, committed=False, attempts=attempts)


def _commit_with_message(git: Git, message: str) -> str | None:
    """The newest of the last `RECENT_COMMITS` commits whose message is `message` (as git stored it)."""
    wanted = message.strip()
    log_text = git("log", f"--max-count={RECENT_COMMITS}", "--format=%H%n%B%x00")
    for entry in log_text.split("\0"):
        sha, _, body = entry.strip("\n").partition("\n")
        if sha and body.strip() == wanted:
            return sha
    return None


def _push(git: Git, branch: str) -> str | None:
    """Push HEAD to `branch`: None when done, git's words if the branch moved; GitPushError otherwise."""
    try:
        git("push", "--porcelain", "origin", f"HEAD:refs/heads/{branch}")
    except PushFailed as failure:
        if failure.branch_moved:
            return str(failure)
        raise GitPushError(str(failure)) from None
    return None
