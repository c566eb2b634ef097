"""A local bare partial mirror of one configured repository, cloned on first use, fetched on demand.

A Flux event names a revision; the commits behind it, and their trailers, come from this mirror,
kept under `git.cache_dir`. Reading uses pygit2 (`commits`), fetching the `git` CLI (`commands`).

A mirror is created with pygit2 (an empty bare repository whose `origin` refspec mirrors every
ref, so any branch, tag or pull-request ref Flux follows is there), then filled by the same
`git fetch` that later brings new commits: one fetch path, and the URL is not on our command
line. (git hands it to its remote helper in argv, one more reason a URL must not carry a password.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pygit2
import structlog
from pygit2.enums import ObjectType

from receiver.config import GitRepository
from receiver.git import commands
from receiver.git.commits import MAX_WALK, AppliedCommits, applied_commits, tree_path
from receiver.git.errors import AmbiguousRevision, RevisionNotFound
from receiver.secrets import FileSecret

_SHA_PREFIX = re.compile(r"[0-9a-f]{4,40}")
log = structlog.get_logger(__name__)

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
        return await asyncio.to_thread(self._applied, repo, head, base, previous is None, tree_path(path))

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
        return await commands.signature_problem(self.path, allowed, sha)

    def _applied(
        self, repo: pygit2.Repository, head: str, base: str | None, first: bool, path: str
    ) -> AppliedCommits:
        with self._repo_lock:
            return applied_commits(repo, head, base, first, path, self.max_walk)

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
        """Run one `git fetch` into the mirror (or `git_dir`, while it is created).

        Raises:
            TemporaryMirrorError: git failed or timed out, or the token file cannot be read.
        """
        env, secrets = await asyncio.to_thread(
            commands.fetch_environment, self.repository, self._token, self.path.parent / "known_hosts"
        )
        await commands.fetch(
            self.name, git_dir or self.path, action, env, secrets, self.fetch_timeout_seconds
        )


def _allow_partial_clone_extension() -> None:
    """Let libgit2 open mirrors where an older git set `extensions.partialclone` (irrelevant for reading)."""
    enabled = pygit2.settings.extensions
    if "partialclone" not in enabled:
        pygit2.settings.set_extensions([*enabled, "partialclone"])
