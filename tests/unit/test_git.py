"""receiver.git against real repositories: a bare "remote" in tmp_path, served over file:// or HTTP."""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import structlog

from receiver.config import GitConfig, GitObject, GitRepository
from receiver.git import (
    AmbiguousRevision,
    GitConfigError,
    Mirror,
    MirrorError,
    Mirrors,
    RevisionNotFound,
    TemporaryMirrorError,
)
from receiver.trailers import Trailer
from tests.helpers import ProcessWatch

EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
TRAILERS = "Airflow-Dag-Id: deploy\nAirflow-Run-Id: manual__1\n"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mirror's git must not see the user's global git configuration (credential helpers, rewrites)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))


class Remote:
    """A bare repository playing the Git host, and a work tree that commits and pushes to it."""

    def __init__(self, root: Path, allow_filter: bool = True) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(root / "home"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "Dag Author",
            "GIT_AUTHOR_EMAIL": "dag@example.com",
            "GIT_COMMITTER_NAME": "Airflow",
            "GIT_COMMITTER_EMAIL": "airflow@example.com",
        }
        self.clock = EPOCH
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        if allow_filter:
            self.git("config", "uploadpack.allowFilter", "true", cwd=self.bare)
        self.git("init", "-q", "-b", "main", str(self.work), cwd=root)
        self.git("remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def git(self, *args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd or self.work,
            env=self.env,
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            check=True,
        )
        return result.stdout.decode().strip()

    def commit(self, message: str, **files: str | None) -> str:
        """Write (or with None delete) files given as `dir__name=content`, commit, return the SHA."""
        for name, content in files.items():
            path = self.work / name.replace("__", "/")
            if content is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        self.clock += 60
        self.env["GIT_AUTHOR_DATE"] = self.env["GIT_COMMITTER_DATE"] = f"@{self.clock} +0200"
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-F", "-", stdin=message)
        return self.git("rev-parse", "HEAD")

    def push(self, force: bool = False) -> None:
        self.git("push", "-q", *(["--force"] if force else []), "origin", "HEAD:refs/heads/main")

    def blobs(self) -> set[str]:
        lines = self.git(
            "rev-list", "--objects", "--all", "--filter=blob:none", "--filter-print-omitted", cwd=self.bare
        )
        return {line[1:] for line in lines.splitlines() if line.startswith("~")}


def missing_objects(mirror: Mirror) -> set[str]:
    """Objects the mirror knows of but does not have (`--missing=print` never fetches them lazily)."""
    result = subprocess.run(
        ["git", "--git-dir", str(mirror.path), "rev-list", "--objects", "--all", "--missing=print"],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"], "GIT_NO_LAZY_FETCH": "1"},
    )
    return {line[1:] for line in result.stdout.decode().splitlines() if line.startswith("?")}


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(tmp_path)


def make_mirror(remote: Remote, tmp_path: Path, *, timeout: float = 20.0, max_walk: int = 5000) -> Mirror:
    repository = GitRepository(name="flux-system/fleet", url=remote.url)
    return Mirror(repository, tmp_path / "cache", timeout, max_walk)


async def test_resolves_full_and_short_shas(remote: Remote, tmp_path: Path) -> None:
    sha = remote.commit(f"Deploy\n\n{TRAILERS}", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    assert not mirror.path.exists()
    assert await mirror.resolve(sha) == sha
    assert mirror.path == tmp_path / "cache" / "flux-system%2Ffleet.git"
    assert mirror.path.is_dir()
    assert await mirror.resolve(sha[:12]) == sha
    assert await mirror.resolve(sha.upper()) == sha
    assert mirror.fetch_count == 0


async def test_unknown_sha_is_fetched_once(remote: Remote, tmp_path: Path) -> None:
    first = remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    await mirror.resolve(first)
    second = remote.commit("two", apps__a="2")
    remote.push()
    assert await mirror.resolve(second[:12]) == second
    assert mirror.fetch_count == 1
    assert await mirror.resolve(second) == second
    assert await mirror.resolve(first) == first
    assert mirror.fetch_count == 1


async def test_concurrent_lookups_share_one_fetch(remote: Remote, tmp_path: Path) -> None:
    remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    await mirror.resolve(remote.git("rev-parse", "HEAD"))
    new = remote.commit("two", apps__a="2")
    remote.push()
    results = await asyncio.gather(*(mirror.resolve(new if i % 2 else new[:12]) for i in range(20)))
    assert results == [new] * 20
    assert mirror.fetch_count == 1


async def test_unknown_after_fetch_is_revision_not_found(remote: Remote, tmp_path: Path) -> None:
    remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    missing = "0123456789abcdef" * 2 + "01234567"
    with pytest.raises(RevisionNotFound) as caught:
        await mirror.resolve(missing)
    assert not isinstance(caught.value, TemporaryMirrorError)
    assert "flux-system/fleet" in str(caught.value)
    assert missing in str(caught.value)
    assert mirror.fetch_count == 1


async def test_concurrent_lookups_of_a_missing_sha_share_one_fetch(remote: Remote, tmp_path: Path) -> None:
    remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    await mirror.resolve(remote.git("rev-parse", "HEAD"))
    results = await asyncio.gather(
        *(mirror.resolve("deadbeef" * 5) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(result, RevisionNotFound) for result in results)
    assert mirror.fetch_count == 1


async def test_a_name_is_not_a_revision(remote: Remote, tmp_path: Path) -> None:
    remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    for rev in ("main", "abc", "sha1:" + "a" * 40, "a" * 41):
        with pytest.raises(RevisionNotFound, match="is not a commit SHA"):
            await mirror.resolve(rev)
    assert mirror.fetch_count == 0


async def test_ambiguous_short_sha_has_its_own_error(remote: Remote, tmp_path: Path) -> None:
    stream = "".join(
        f"commit refs/heads/main\ncommitter A <a@b> {EPOCH + i} +0000\ndata 4\nc{i:03}\n\n"
        for i in range(600)
    )
    remote.git("fast-import", "--quiet", cwd=remote.bare, stdin=stream)
    shas = remote.git("rev-list", "main", cwd=remote.bare).split()
    prefixes = [sha[:4] for sha in shas]
    shared = next(prefix for prefix in prefixes if prefixes.count(prefix) > 1)
    mirror = make_mirror(remote, tmp_path)
    with pytest.raises(AmbiguousRevision, match=f"{shared} matches more than one object") as caught:
        await mirror.resolve(shared)
    assert not isinstance(caught.value, TemporaryMirrorError)
    assert await mirror.resolve(shas[0][:12]) == shas[0]


async def test_range_is_returned_oldest_first_with_trailers(remote: Remote, tmp_path: Path) -> None:
    base = remote.commit("base", apps__a="0")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    await mirror.resolve(base)
    pushed = [
        remote.commit(f"change {i}\n\nBody.\n\n{TRAILERS}Airflow-Task-Id: t{i}\n", apps__a=str(i))
        for i in (1, 2, 3)
    ]
    remote.push()
    applied = await mirror.commits_applied(base, pushed[-1], "./apps")
    assert applied.basis == "range"
    assert not applied.truncated
    assert [c.sha for c in applied.commits] == pushed
    first = applied.commits[0]
    assert first.message == f"change 1\n\nBody.\n\n{TRAILERS}Airflow-Task-Id: t1\n"
    assert first.trailers == (
        Trailer("Airflow-Dag-Id", "deploy"),
        Trailer("Airflow-Run-Id", "manual__1"),
        Trailer("Airflow-Task-Id", "t1"),
    )
    assert first.author == "Dag Author <dag@example.com>"
    assert first.committed_at == datetime.fromtimestamp(EPOCH + 120, tz=UTC)
    assert first.committed_at.tzinfo is UTC
    assert mirror.fetch_count == 1


async def test_commits_outside_the_path_are_left_out(remote: Remote, tmp_path: Path) -> None:
    base = remote.commit("base", apps__a="0", other="0")
    inside = remote.commit("apps", apps__a="1")
    outside = remote.commit("other", other="1")
    nested = remote.commit("nested", apps__sub__b="1")
    deleted = remote.commit("delete", apps__a=None)
    empty = remote.commit("empty")
    remote.push()
    mirror = make_mirror(remote, tmp_path)

    async def shas(path: str) -> list[str]:
        return [c.sha for c in (await mirror.commits_applied(base, empty, path)).commits]

    assert await shas("./apps") == [inside, nested, deleted]
    assert await shas("apps/") == [inside, nested, deleted]
    assert await shas("./apps/sub") == [nested]
    assert await shas("apps/a") == [inside, deleted]
    assert await shas("other") == [outside]
    assert await shas("./missing") == []
    for whole in ("", ".", "./", "/"):
        assert await shas(whole) == [inside, outside, nested, deleted, empty]


async def test_first_revision_counts_alone(remote: Remote, tmp_path: Path) -> None:
    remote.commit("one", apps__a="1")
    apps = remote.commit("two", apps__a="2")
    other = remote.commit("three", other="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    applied = await mirror.commits_applied(None, apps, "./apps")
    assert applied.basis == "first"
    assert [c.sha for c in applied.commits] == [apps]
    untouched = await mirror.commits_applied(None, other, "./apps")
    assert (untouched.basis, untouched.commits) == ("first", ())


async def test_same_revision_is_nothing_new(remote: Remote, tmp_path: Path) -> None:
    sha = remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    applied = await mirror.commits_applied(sha, sha[:12], "./apps")
    assert (applied.basis, applied.commits) == ("same", ())


async def test_force_push_and_rollback_are_not_descendants(remote: Remote, tmp_path: Path) -> None:
    base = remote.commit("base", apps__a="0")
    old = remote.commit("old", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    await mirror.resolve(old)
    remote.git("reset", "-q", "--hard", base)
    rewritten = remote.commit("rewritten", apps__a="2")
    remote.push(force=True)

    forced = await mirror.commits_applied(old, rewritten, "./apps")
    assert forced.basis == "not-descendant"
    assert [c.sha for c in forced.commits] == [rewritten]
    rollback = await mirror.commits_applied(rewritten, base, "./apps")
    assert rollback.basis == "not-descendant"
    assert [c.sha for c in rollback.commits] == [base]
    assert mirror.fetch_count == 1


async def test_previous_that_no_longer_exists_is_not_a_descendant(remote: Remote, tmp_path: Path) -> None:
    base = remote.commit("base", apps__a="0")
    gone = remote.commit("gone", apps__a="1")
    remote.git("reset", "-q", "--hard", base)
    current = remote.commit("current", apps__a="2")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    applied = await mirror.commits_applied(gone, current, "./apps")
    assert applied.basis == "not-descendant"
    assert [c.sha for c in applied.commits] == [current]
    assert mirror.fetch_count == 1


@pytest.mark.parametrize("main_touches_apps", [False, True])
async def test_merges(remote: Remote, tmp_path: Path, main_touches_apps: bool) -> None:
    base = remote.commit("base", apps__a="0", other="0")
    remote.git("checkout", "-q", "-b", "feature")
    feature = remote.commit("feature", apps__b="1")
    remote.git("checkout", "-q", "main")
    mainline = remote.commit("main", **({"apps__c": "1"} if main_touches_apps else {"other": "1"}))
    remote.clock += 60
    remote.env["GIT_COMMITTER_DATE"] = f"@{remote.clock} +0000"
    remote.git("merge", "-q", "--no-ff", "-m", "Merge feature", "feature")
    merge = remote.git("rev-parse", "HEAD")
    remote.push()
    mirror = make_mirror(remote, tmp_path)

    apps = await mirror.commits_applied(base, merge, "./apps")
    expected = [feature, mainline, merge] if main_touches_apps else [feature]
    assert sorted(c.sha for c in apps.commits) == sorted(expected)
    whole = await mirror.commits_applied(base, merge, "")
    assert sorted(c.sha for c in whole.commits) == sorted([feature, mainline, merge])
    assert whole.commits[-1].sha == merge


async def test_walk_is_capped(remote: Remote, tmp_path: Path) -> None:
    base = remote.commit("base", apps__a="0")
    shas = [remote.commit(f"c{i}", apps__a=str(i)) for i in range(1, 5)]
    remote.push()
    mirror = make_mirror(remote, tmp_path, max_walk=2)
    applied = await mirror.commits_applied(base, shas[-1], "./apps")
    assert applied.truncated
    assert [c.sha for c in applied.commits] == shas[-2:]


async def test_mirror_has_no_blobs_when_the_remote_allows_filters(remote: Remote, tmp_path: Path) -> None:
    remote.commit("one", apps__a="1", other="x")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    await mirror.resolve(remote.git("rev-parse", "HEAD"))
    new = remote.commit("two", apps__a="2")
    remote.push()
    assert [c.sha for c in (await mirror.commits_applied(None, new, "apps/a")).commits] == [new]
    assert mirror.fetch_count == 1
    assert missing_objects(mirror) == remote.blobs()
    assert len(remote.blobs()) == 3


async def test_full_fetch_when_the_remote_refuses_filters(tmp_path: Path) -> None:
    remote = Remote(tmp_path, allow_filter=False)
    sha = remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    assert await mirror.resolve(sha) == sha
    assert missing_objects(mirror) == set()
    new = remote.commit("two", apps__a="2")
    remote.push()
    assert await mirror.resolve(new) == new
    assert missing_objects(mirror) == set()


async def test_an_existing_mirror_is_reused(remote: Remote, tmp_path: Path) -> None:
    sha = remote.commit("one", apps__a="1")
    remote.push()
    await make_mirror(remote, tmp_path).resolve(sha)
    remote.git("update-ref", "-d", "refs/heads/main", cwd=remote.bare)  # the remote no longer has it
    again = make_mirror(remote, tmp_path)
    assert await again.resolve(sha) == sha
    assert again.fetch_count == 0


async def test_a_mirror_follows_a_changed_url(remote: Remote, tmp_path: Path) -> None:
    sha = remote.commit("one", apps__a="1")
    remote.push()
    await make_mirror(remote, tmp_path).resolve(sha)
    moved = tmp_path / "moved.git"
    remote.bare.rename(moved)
    remote.git("remote", "set-url", "origin", str(moved))
    new = remote.commit("two", apps__a="2")
    remote.push()
    repository = GitRepository(name="flux-system/fleet", url=f"file://{moved}")
    mirror = Mirror(repository, tmp_path / "cache", 20.0)
    assert await mirror.resolve(new) == new
    assert mirror.fetch_count == 1


async def test_an_unusable_mirror_is_cloned_again(remote: Remote, tmp_path: Path) -> None:
    sha = remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    mirror.path.mkdir(parents=True)
    (mirror.path / "HEAD").write_text("not a repository")
    with structlog.testing.capture_logs() as logs:
        assert await mirror.resolve(sha) == sha
    assert [entry["event"] for entry in logs] == ["git.mirror_unusable", "git.fetched"]


async def test_a_mirror_marked_by_an_older_git_opens(remote: Remote, tmp_path: Path) -> None:
    """git before 2.2x wrote `extensions.partialclone`, which libgit2 refuses unless told otherwise."""
    sha = remote.commit("one", apps__a="1")
    remote.push()
    mirror = make_mirror(remote, tmp_path)
    await mirror.resolve(sha)
    remote.git("config", "extensions.partialclone", "origin", cwd=mirror.path)
    with structlog.testing.capture_logs() as logs:
        assert await make_mirror(remote, tmp_path).resolve(sha) == sha
    assert logs == []


async def test_fetch_failure_is_temporary_and_names_the_repository(tmp_path: Path) -> None:
    repository = GitRepository(name="team/fleet", url=f"file://{tmp_path}/does-not-exist.git")
    mirror = Mirror(repository, tmp_path / "cache", 20.0)
    with pytest.raises(TemporaryMirrorError, match="team/fleet: git clone failed") as caught:
        await mirror.resolve("a" * 40)
    assert isinstance(caught.value, TemporaryMirrorError)
    assert not mirror.path.exists()
    assert list((tmp_path / "cache").iterdir()) == []


async def test_url_credentials_never_reach_messages_or_logs(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    # The loader refuses such a URL; the mirror must still not leak one given to it directly.
    repository = GitRepository.model_construct(
        name="team/fleet", url=f"http://user:s3cr3t-in-url@127.0.0.1:{port}/x.git"
    )
    mirror = Mirror(repository, tmp_path / "cache", 20.0)
    with structlog.testing.capture_logs() as logs, pytest.raises(TemporaryMirrorError) as caught:
        await mirror.resolve("a" * 40)
    assert "team/fleet" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert logs
    assert "s3cr3t" not in repr(logs)


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(cmdline.decode(errors="replace"))
    return found


async def test_fetch_timeout_kills_git(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        repository = GitRepository(name="team/fleet", url=f"http://127.0.0.1:{port}/x.git")
        mirror = Mirror(repository, tmp_path / "cache", 0.5)
        started = time.monotonic()
        with pytest.raises(
            TemporaryMirrorError, match=r"team/fleet: git clone failed: timed out after 0.5 s"
        ):
            await mirror.resolve("a" * 40)
        assert time.monotonic() - started < 5
        assert processes_mentioning(f"127.0.0.1:{port}") == []


class GitHTTPServer:
    """`git http-backend` behind HTTP basic auth on loopback, slowed down so process scans see the fetch."""

    def __init__(self, root: Path, username: str, token: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{username}:{token}".encode()).decode()
        self.unauthorized = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self)

            def do_POST(self) -> None:
                server.handle(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: requests are counted instead."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if not hmac.compare_digest(request.headers.get("Authorization", ""), self.expected):
            self.unauthorized += 1
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="git"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        time.sleep(0.1)
        path, _, query = request.path.partition("?")
        cgi = subprocess.run(
            ["git", "http-backend"],
            input=body,
            capture_output=True,
            check=True,
            env={
                "PATH": os.environ["PATH"],
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_PROJECT_ROOT": str(self.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": request.command,
                "CONTENT_TYPE": request.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
                "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
                "REMOTE_USER": "fluxback",
                "REMOTE_ADDR": "127.0.0.1",
            },
        )
        head, _, payload = cgi.stdout.partition(b"\r\n\r\n")
        headers = [line.split(": ", 1) for line in head.decode().split("\r\n") if line]
        status = next((int(value.split()[0]) for name, value in headers if name == "Status"), 200)
        request.send_response(status)
        for name, value in headers:
            if name != "Status":
                request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)


@pytest.fixture
def http_remote(remote: Remote) -> Iterator[tuple[Remote, GitHTTPServer, str]]:
    token = "tok-" + secrets.token_hex(16)
    server = GitHTTPServer(remote.bare.parent, "x-access-token", token)
    server.thread.start()
    try:
        yield remote, server, token
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join()


async def test_https_token_from_file(http_remote: tuple[Remote, GitHTTPServer, str], tmp_path: Path) -> None:
    remote, server, token = http_remote
    sha = remote.commit("one", apps__a="1")
    remote.push()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    repository = GitRepository(
        name="team/fleet",
        url=f"http://127.0.0.1:{server.port}/remote.git",
        token_file=token_file,
        username="x-access-token",
    )
    mirror = Mirror(repository, tmp_path / "cache", 20.0)
    with structlog.testing.capture_logs() as logs, ProcessWatch(token) as watch:
        assert await mirror.resolve(sha) == sha
        new = remote.commit("two", apps__a="2")
        remote.push()
        assert await mirror.resolve(new) == new
    assert watch.seen_git_http, "the process scan did not run while git fetched"
    assert watch.leaks == []
    assert server.unauthorized >= 1  # git sent the token only when asked
    assert mirror.fetch_count == 1
    assert token not in repr(logs)
    assert missing_objects(mirror) == remote.blobs()  # the partial clone works over HTTP too
    assert token not in (mirror.path / "config").read_text()
    assert token not in "".join(p.read_text(errors="replace") for p in mirror.path.glob("*") if p.is_file())


async def test_wrong_token_fails_cleanly_and_a_rotated_one_is_used(
    http_remote: tuple[Remote, GitHTTPServer, str], tmp_path: Path
) -> None:
    remote, server, token = http_remote
    sha = remote.commit("one", apps__a="1")
    remote.push()
    wrong = "wrong-" + secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(wrong)
    repository = GitRepository(
        name="team/fleet",
        url=f"http://127.0.0.1:{server.port}/remote.git",
        token_file=token_file,
        username="x-access-token",
    )
    mirror = Mirror(repository, tmp_path / "cache", 20.0)
    with structlog.testing.capture_logs() as logs, pytest.raises(TemporaryMirrorError) as caught:
        await mirror.resolve(sha)
    message = str(caught.value)
    assert message.startswith("team/fleet: git clone failed:")
    assert "Authentication failed" in message
    assert wrong not in message
    assert wrong not in repr(logs)
    assert token not in message

    token_file.write_text(token + "\n")  # rotated in place, as Kubernetes does
    assert await mirror.resolve(sha) == sha


async def test_missing_token_file_is_a_temporary_error_naming_the_file(tmp_path: Path) -> None:
    repository = GitRepository(
        name="team/fleet", url="https://git.example.com/fleet.git", token_file=tmp_path / "absent"
    )
    mirror = Mirror(repository, tmp_path / "cache", 20.0)
    with pytest.raises(
        TemporaryMirrorError, match=f"team/fleet: cannot read secret file {tmp_path / 'absent'}"
    ):
        await mirror.resolve("a" * 40)


async def test_inherited_git_variables_do_not_reach_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIT_* variables of the service's environment (config injection, traces that can print credentials)."""
    trace = tmp_path / "trace.log"
    monkeypatch.setenv("GIT_TRACE", str(trace))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'remote.origin.url'='file://{tmp_path}/elsewhere.git'")
    remote = Remote(tmp_path)
    sha = remote.commit("one", apps__a="1")
    remote.push()
    assert await make_mirror(remote, tmp_path).resolve(sha) == sha
    assert not trace.exists()


@pytest.fixture
def ssh_key(tmp_path: Path) -> Path:
    key = tmp_path / "id ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


async def test_ssh_key_and_known_hosts_reach_ssh(tmp_path: Path, ssh_key: Path) -> None:
    """Runs the real ssh with the configured files (a path with a space); the host refuses the connection."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    repository = GitRepository(
        name="team/fleet",
        url=f"ssh://git@127.0.0.1:{port}/fleet.git",
        ssh_key_file=ssh_key,
        ssh_known_hosts_file=known_hosts,
    )
    mirror = Mirror(repository, tmp_path / "cache", 20.0)
    with pytest.raises(TemporaryMirrorError, match=f"port {port}: Connection refused"):
        await mirror.resolve("a" * 40)


def test_mirrors_map_flux_objects_to_repositories(tmp_path: Path) -> None:
    config = GitConfig(
        cache_dir=tmp_path,
        repositories=(
            GitRepository(name="flux-system/flux-system", url="https://git.example.com/fleet.git"),
            GitRepository(name="apps/apps", url="https://git.example.com/apps.git"),
        ),
        objects=(
            GitObject(
                kind="Kustomization",
                namespace="flux-system",
                name="apps",
                repository="apps/apps",
                path="./apps",
            ),
            GitObject(
                kind="GitRepository", namespace="apps", name="apps", repository="apps/apps", path="./only"
            ),
        ),
    )
    mirrors = Mirrors(config)
    fleet, apps = mirrors.get("flux-system/flux-system"), mirrors.get("apps/apps")
    assert fleet.path == tmp_path / "flux-system%2Fflux-system.git"
    assert mirrors.for_object("Kustomization", "flux-system", "apps") == (apps, "./apps")
    assert mirrors.for_object("GitRepository", "flux-system", "flux-system") == (fleet, "")
    assert mirrors.for_object("GitRepository", "apps", "apps") == (apps, "./only")
    unmapped = "no git repository configured for {} (git.objects)".format
    for key in (
        "Kustomization/flux-system/flux-system",
        "HelmRelease/flux-system/apps",
        "GitRepository/other/repo",
    ):
        assert mirrors.for_object(*key.split("/")) == unmapped(key)
    with pytest.raises(GitConfigError, match=r"no repository 'nope/nope' in git\.repositories") as caught:
        mirrors.get("nope/nope")
    assert isinstance(caught.value, MirrorError)
    assert not isinstance(caught.value, TemporaryMirrorError)
