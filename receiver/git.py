"""The service's view of the GitOps repositories: local mirrors, commit lookup by SHA, the applied range.

A Flux event names a revision; the commits behind it, and their trailers, come from a local
bare mirror of each configured repository, kept under `git.cache_dir`.

Why two tools:
- Reading (lookup by SHA, range walk, tree-entry comparison) uses pygit2 in-process: it is the
  fastest for lookups and the usual small ranges (measured on a 100,000-commit mirror: 0.007 ms
  per lookup by SHA, 4.6 ms for a 1,000-commit range under a path, against 0.05 ms and 16.7 ms
  through a long-lived `git cat-file --batch`) and needs no process per call.
- Fetching uses the `git` CLI as an asyncio subprocess, because libgit2 cannot do a partial fetch:
  with `--filter=blob:none` the mirror holds commits and trees only, which is all the path
  comparison needs, and a large repository's file contents are never downloaded. A server that
  does not support filters gets the full fetch (git falls back by itself).

A mirror is created with pygit2 (an empty bare repository whose `origin` refspec mirrors every
ref, so any branch, tag or pull-request ref Flux follows is there), then filled by the same
`git fetch` that later brings new commits: one fetch path, and the URL is not on our command
line. (git hands it to its remote helper in argv, one more reason a URL must not carry a password.)

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
import posixpath
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import quote

import pygit2
import structlog
from pygit2.enums import ObjectType, SortMode

from receiver.config import GitConfig, GitRepository
from receiver.errors import PermanentError, TemporaryError
from receiver.git_credentials import git_environment, origin, password_helper, ssh_command
from receiver.secrets import FileSecret, SecretUnavailable
from receiver.trailers import Trailer, commit_trailers

MAX_WALK = 5000
"""Most commits one range walk visits; older commits of a larger range are left out (`truncated`)."""

Basis = Literal["range", "first", "not-descendant", "same"]

_SHA_PREFIX = re.compile(r"[0-9a-f]{4,40}")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_STDERR_CHARS = 500
log = structlog.get_logger(__name__)


class MirrorError(Exception):
    """A problem of the service's git mirrors; each is a `TemporaryError` or a `PermanentError`."""

    reason: str


class TemporaryMirrorError(TemporaryError, MirrorError):
    """Fetching failed (network, timeout, authentication): retry later. Names the repository, no secret."""


class RevisionNotFound(PermanentError, MirrorError):
    """The repository has no such commit, even after fetching."""


class AmbiguousRevision(PermanentError, MirrorError):
    """A short SHA matches more than one object in the repository."""


class GitConfigError(PermanentError, MirrorError):
    """The git configuration cannot serve the request (unknown repository)."""


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    message: str
    committed_at: datetime
    """Committer time, aware, in UTC."""
    author: str
    """`Name <email>`."""
    trailers: tuple[Trailer, ...]
    """As `git log --format=%(trailers)` reads them."""


@dataclass(frozen=True)
class AppliedCommits:
    """The commits an event made live for one Flux object, oldest first."""

    commits: tuple[CommitInfo, ...]
    basis: Basis
    """`range`: (previous..revision]; `first`: no previous revision, the revision alone;
    `not-descendant`: the revision does not descend from the previous one (force push, rollback,
    or the previous commit no longer exists), the revision alone; `same`: nothing new."""
    truncated: bool = False
    """The range had more than the walk limit; only the newest commits were examined."""


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove URL userinfo and known secret values from text meant for logs and exceptions."""
    text = _USERINFO.sub("***@", text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _tree_path(path: str) -> str:
    """A Flux path (`./apps`, `apps/`, `.`, ``) as a tree path; `` is the whole repository.

    Like Flux's secure join, `..` cannot leave the repository root.
    """
    return posixpath.normpath("/" + path).lstrip("/")


def _entry(tree: pygit2.Tree, path: str) -> tuple[pygit2.Oid, int] | None:
    try:
        entry = tree[path]
    except KeyError:
        return None
    return entry.id, entry.filemode


def _touches(commit: pygit2.Commit, path: str) -> bool:
    """Whether the commit changes `path`: its entry there differs from that of every parent.

    With one parent this is "the commit changed something under path". A merge that takes the
    path from one of its parents changes nothing by itself (the commits it brings in are in the
    range and are counted on their own); a merge that resolves a conflict under the path counts.
    The whole repository (`path` empty) counts every commit, empty ones and merges included,
    as `git log previous..revision` lists them.
    """
    if not path:
        return True
    mine = _entry(commit.tree, path)
    if not commit.parents:
        return mine is not None
    return all(_entry(parent.tree, path) != mine for parent in commit.parents)


def _commit_info(commit: pygit2.Commit) -> CommitInfo:
    return CommitInfo(
        sha=str(commit.id),
        message=commit.message,
        committed_at=datetime.fromtimestamp(commit.commit_time, tz=UTC),
        author=f"{commit.author.name} <{commit.author.email}>",
        trailers=tuple(commit_trailers(commit.message)),
    )


FetchObserver = Callable[[str, str], None]
"""Told of every on-demand fetch: (repository name, "ok" or "error"), e.g. for metrics."""


class Mirror:
    """A local partial mirror of one configured repository, cloned on first use, fetched on demand."""

    def __init__(
        self,
        repository: GitRepository,
        cache_dir: Path,
        fetch_timeout_seconds: float,
        max_walk: int = MAX_WALK,
        on_fetch: FetchObserver | None = None,
    ) -> None:
        self.repository = repository
        self._on_fetch = on_fetch
        self.path = cache_dir / (quote(repository.name, safe="") + ".git")
        self.fetch_timeout_seconds = fetch_timeout_seconds
        self.max_walk = max_walk
        self.fetch_count = 0
        """Fetches run for revisions that were unknown locally (the initial clone is not counted)."""
        self._token = FileSecret(repository.token_file) if repository.token_file else None
        self._repo: pygit2.Repository | None = None
        self._repo_lock = threading.Lock()  # one pygit2 handle, used by one worker thread at a time
        self._open_lock = asyncio.Lock()
        self._fetch_task: asyncio.Task[None] | None = None
        self._fetches_started = 0
        self._fetched = 0  # number of the last fetch that succeeded; fetches run one at a time, in order

    def __repr__(self) -> str:
        return f"Mirror({self.repository.name!r}, {str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.repository.name

    async def resolve(self, rev: str) -> str:
        """The full SHA of a commit given by full or abbreviated (4 to 40 hex digits) SHA.

        Fetches once when the commit is not in the mirror.

        Raises:
            RevisionNotFound: not a SHA, or no such commit after a fetch.
            AmbiguousRevision: the abbreviation matches more than one object.
            TemporaryMirrorError: the fetch failed.
        """
        repo = await self._open()
        return await self._resolve(repo, rev, self._fetches_started)

    async def commits_applied(self, previous: str | None, revision: str, path: str) -> AppliedCommits:
        """The commits that moving a Flux object from `previous` to `revision` made live, under `path`.

        `previous` may be gone from the repository (force push and garbage collection); the
        revision then counts alone, as for any revision that does not descend from `previous`.

        Raises:
            RevisionNotFound: `revision` is unknown after a fetch.
            AmbiguousRevision: an abbreviated SHA matches more than one object.
            TemporaryMirrorError: a needed fetch failed.
        """
        repo = await self._open()
        seen = self._fetches_started  # one fetch that starts after this serves both revisions
        head = await self._resolve(repo, revision, seen)
        base: str | None = None
        if previous is not None:
            with contextlib.suppress(RevisionNotFound):
                base = await self._resolve(repo, previous, seen)
        return await asyncio.to_thread(self._applied, repo, head, base, previous is None, _tree_path(path))

    async def contains(self, revision: str, commit: str) -> bool:
        """Whether `commit` is `revision` or one of its ancestors; both are full shas `resolve` returned."""
        repo = await self._open()

        def check() -> bool:
            with self._repo_lock:
                return revision == commit or bool(repo.descendant_of(revision, commit))

        return await asyncio.to_thread(check)

    async def signature_problem(self, sha: str) -> str | None:
        """Why the commit does not count as signed by an allowed signer, or None when it does.

        Only for repositories with `allowed_signers_file`; git's own `verify-commit` does the
        check (SSH signatures through `ssh-keygen`), on the mirror, which has every commit.
        """
        allowed = self.repository.allowed_signers_file
        if allowed is None:
            return None
        env = git_environment("nothing") | {"LC_ALL": "C"}
        process = await asyncio.create_subprocess_exec(
            "git",
            f"--git-dir={self.path}",
            "-c",
            f"gpg.ssh.allowedSignersFile={allowed}",
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

    def _applied(
        self, repo: pygit2.Repository, head: str, base: str | None, first: bool, path: str
    ) -> AppliedCommits:
        with self._repo_lock:
            if base == head:
                return AppliedCommits((), "same")
            tip = repo[head].peel(pygit2.Commit)
            if first or base is None or not repo.descendant_of(head, base):
                commits = (_commit_info(tip),) if _touches(tip, path) else ()
                return AppliedCommits(commits, "first" if first else "not-descendant")
            walker = repo.walk(tip.id, SortMode.TOPOLOGICAL)
            walker.hide(pygit2.Oid(hex=base))
            newest_first: list[CommitInfo] = []
            truncated = False
            for count, commit in enumerate(walker):
                if count == self.max_walk:
                    truncated = True
                    break
                if _touches(commit, path):
                    newest_first.append(_commit_info(commit))
            return AppliedCommits(tuple(reversed(newest_first)), "range", truncated)

    async def _resolve(self, repo: pygit2.Repository, rev: str, seen: int) -> str:
        """Look `rev` up; if missing, fetch unless a fetch that started after fetch number `seen` succeeded.

        A fetch that was already running when the caller asked may have missed the commit, so it
        is waited for but does not settle the question; concurrent callers share one fetch.
        """
        wanted = rev.lower()
        if not _SHA_PREFIX.fullmatch(wanted):
            raise RevisionNotFound(f"{self.name}: {rev!r} is not a commit SHA (4 to 40 hex digits)")
        while True:
            sha = await asyncio.to_thread(self._lookup, repo, wanted)
            if sha is not None:
                return sha
            if self._fetched > seen:
                raise RevisionNotFound(
                    f"{self.name}: no commit {wanted} in the repository, even after a fetch"
                )
            await self._shared_fetch()

    def _lookup(self, repo: pygit2.Repository, wanted: str) -> str | None:
        with self._repo_lock:
            try:
                found = repo.get(wanted)
            except pygit2.AmbiguousError:
                raise AmbiguousRevision(
                    f"{self.name}: {wanted} matches more than one object; use a longer SHA"
                ) from None
        if found is None or found.type != ObjectType.COMMIT:
            return None
        return str(found.id)

    async def _shared_fetch(self) -> None:
        """Join the running fetch, or start one."""
        if self._fetch_task is None:
            self._fetches_started += 1
            self._fetch_task = asyncio.create_task(self._fetch(self._fetches_started))
        await asyncio.shield(self._fetch_task)

    async def _fetch(self, number: int) -> None:
        result = "error"
        try:
            self.fetch_count += 1
            await self._run_fetch("fetch")
            self._fetched = number
            result = "ok"
        finally:
            self._fetch_task = None
            if self._on_fetch is not None:
                self._on_fetch(self.name, result)

    async def _open(self) -> pygit2.Repository:
        """The mirror, created and filled first if it does not exist (or cannot be opened)."""
        async with self._open_lock:
            if self._repo is None:
                self._repo = await asyncio.to_thread(self._open_existing)
            if self._repo is None:
                self._repo = await self._create()
            return self._repo

    def _open_existing(self) -> pygit2.Repository | None:
        _allow_partial_clone_extension()
        if not self.path.exists():
            return None
        try:
            repo = pygit2.Repository(str(self.path))
            if repo.remotes["origin"].url != self.repository.url:
                repo.remotes.set_url("origin", self.repository.url)
        except (pygit2.GitError, KeyError) as error:
            log.warning("git.mirror_unusable", repository=self.name, path=str(self.path), error=str(error))
            shutil.rmtree(self.path)  # the mirror is a cache: clone it again
            return None
        return repo

    async def _create(self) -> pygit2.Repository:
        """Create the mirror in a temporary directory, fill it, then move it into place."""
        staging = await asyncio.to_thread(self._init_staging)
        try:
            await self._run_fetch("clone", staging)
            return await asyncio.to_thread(self._install, staging)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)

    def _init_staging(self) -> Path:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        repo = pygit2.init_repository(str(staging), bare=True)
        repo.remotes.create("origin", self.repository.url, "+refs/*:refs/*")
        return staging

    def _install(self, staging: Path) -> pygit2.Repository:
        staging.rename(self.path)
        return pygit2.Repository(str(self.path))

    async def _run_fetch(self, action: str, git_dir: Path | None = None) -> None:
        """Run one `git fetch` of every ref, without blobs, within the fetch timeout.

        Raises:
            TemporaryMirrorError: git failed or timed out; the message has git's last words, scrubbed.
        """
        env, secrets = await asyncio.to_thread(self._environment)
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            "git",
            f"--git-dir={git_dir or self.path}",
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
            _, stderr = await asyncio.wait_for(process.communicate(), self.fetch_timeout_seconds)
        except TimeoutError:
            raise self._failed(action, f"timed out after {self.fetch_timeout_seconds:g} s", started) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process.returncode != 0:
            detail = stderr.decode(errors="replace").strip()[-_STDERR_CHARS:]
            raise self._failed(action, _scrub(detail, secrets) or f"exit code {process.returncode}", started)
        log.info(
            "git.fetched", repository=self.name, action=action, seconds=round(time.monotonic() - started, 3)
        )

    def _failed(self, action: str, detail: str, started: float) -> TemporaryMirrorError:
        seconds = round(time.monotonic() - started, 3)
        log.warning("git.fetch_failed", repository=self.name, action=action, seconds=seconds, error=detail)
        return TemporaryMirrorError(f"{self.name}: git {action} failed: {detail}")

    def _environment(self) -> tuple[dict[str, str], list[str]]:
        """git's environment for this repository's fetches, and the secret values to scrub from its output.

        Raises:
            TemporaryMirrorError: the token file cannot be read (the message names the file only).
        """
        # LC_ALL=C: git's messages are shown to operators and matched in tests, in English.
        env = git_environment("nothing") | {"GIT_ASKPASS": "", "LC_ALL": "C"}
        secrets: list[str] = []
        repository = self.repository
        if self._token is not None:
            try:
                token = self._token.read_text()
            except SecretUnavailable as error:
                raise TemporaryMirrorError(f"{self.name}: {error}") from None
            if not token:
                raise TemporaryMirrorError(f"{self.name}: token file {self._token.path} is empty")
            secrets.append(token)
            env |= password_helper(repository.username, self._token.path, only_for=origin(repository.url))
        if repository.ssh_key_file is not None:
            env["GIT_SSH_COMMAND"] = ssh_command(
                repository.ssh_key_file,
                repository.ssh_known_hosts_file,
                first_seen_hosts_file=self.path.parent / "known_hosts",
            )
        return env, secrets


def _allow_partial_clone_extension() -> None:
    """Let libgit2 open mirrors where an older git set `extensions.partialclone` (irrelevant for reading)."""
    enabled = pygit2.settings.extensions
    if "partialclone" not in enabled:
        pygit2.settings.set_extensions([*enabled, "partialclone"])


@dataclass(frozen=True)
class ObjectSource:
    """Where a Flux object comes from, as the Kubernetes API says (`receiver.kube.discovery`)."""

    repository: str
    """The Flux GitRepository as `namespace/name`: the key of its credentials in git.repositories."""
    path: str
    url: str


class ObjectLocator(Protocol):
    """Discovery as the mirrors see it; `ready` is False until every Flux kind has been listed."""

    @property
    def ready(self) -> bool: ...

    def locate(self, kind: str, namespace: str, name: str) -> ObjectSource | str | None:
        """The source; a reason why it cannot be known; None for an object not in the cluster."""


class Mirrors:
    """Every configured repository's mirror, and which one (and path) serves a Flux object."""

    def __init__(
        self,
        config: GitConfig,
        max_walk: int = MAX_WALK,
        on_fetch: FetchObserver | None = None,
        locator: ObjectLocator | None = None,
    ) -> None:
        self._config = config
        self._max_walk = max_walk
        self._on_fetch = on_fetch
        self._mirrors = {repository.name: self._mirror(repository) for repository in config.repositories}
        self._objects = config.objects
        self._locator = locator

    def _mirror(self, repository: GitRepository) -> Mirror:
        config = self._config
        return Mirror(
            repository, config.cache_dir, config.fetch_timeout_seconds, self._max_walk, self._on_fetch
        )

    def get(self, repository_name: str) -> Mirror:
        """The mirror of a configured repository (`namespace/name`).

        Raises:
            GitConfigError: no such repository in `git.repositories`.
        """
        try:
            return self._mirrors[repository_name]
        except KeyError:
            raise GitConfigError(f"no repository {repository_name!r} in git.repositories") from None

    def for_object(self, kind: str, namespace: str, name: str) -> tuple[Mirror, str] | str:
        """The mirror and path for a Flux object: `git.objects` first, then what the cluster says
        (when Kubernetes is enabled); a GitRepository is its own repository.

        Returns why not, in an operator's words, for objects that cannot be mapped to a repository.

        Raises:
            TemporaryMirrorError: the Kubernetes API has not been listed yet; ask again later.
        """
        for obj in self._objects:
            if (obj.kind, obj.namespace, obj.name) == (kind, namespace, name):
                return self.get(obj.repository), obj.path
        key = f"{kind}/{namespace}/{name}"
        if self._locator is not None:
            if not self._locator.ready:
                raise TemporaryMirrorError(
                    f"the Flux objects are not listed from Kubernetes yet; {key} waits"
                )
            located = self._locator.locate(kind, namespace, name)
            if isinstance(located, str):
                return located
            if located is not None:
                return self._discovered(located)
        mirror = self._mirrors.get(f"{namespace}/{name}")
        if kind == "GitRepository" and mirror is not None:
            return mirror, ""
        return f"no git repository configured for {key} (git.objects)"

    def _discovered(self, source: ObjectSource) -> tuple[Mirror, str] | str:
        mirror = self._mirrors.get(source.repository)
        if mirror is None:
            return (
                f"GitRepository {source.repository} ({source.url}) has no entry in git.repositories:"
                " add one with its credentials"
            )
        if not mirror.repository.url:
            # The configured entry holds only credentials; the cluster names the URL.
            mirror = self._mirror(mirror.repository.model_copy(update={"url": source.url}))
            self._mirrors[source.repository] = mirror
        return mirror, source.path
