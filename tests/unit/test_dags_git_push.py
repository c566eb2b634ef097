"""Commit and push against real bare repositories: retries when the branch moves, credentials, reverts."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import stat
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web

from receiver.dags import (
    GitAuth,
    GitIdentity,
    GitPushError,
    PushRejected,
    PushResult,
    RevertCommit,
    WorkTree,
    YamlValue,
    add_airflow_trailers,
    commit_and_push,
)
from receiver.dags.git_command import credentials_environment, refuse_credentials_in
from tests.helpers import ProcessWatch

SEED_IDENTITY = {
    "GIT_AUTHOR_NAME": "Seed",
    "GIT_AUTHOR_EMAIL": "seed@example.com",
    "GIT_COMMITTER_NAME": "Seed",
    "GIT_COMMITTER_EMAIL": "seed@example.com",
}
RELEASE = "apps/model/release.yaml"
RELEASE_TEXT = "spec:\n  values:\n    image:\n      tag: 1.0.0  # set by Airflow\n"


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **SEED_IDENTITY},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def make_remote(root: Path, files: dict[str, str] | None = None) -> Path:
    """A bare repository whose `main` has one commit with `files`."""
    remote = root / "remote.git"
    git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    seed = root / "seed"
    git(root, "clone", "--quiet", str(remote), str(seed))
    for name, text in (files or {RELEASE: RELEASE_TEXT}).items():
        (seed / name).parent.mkdir(parents=True, exist_ok=True)
        (seed / name).write_text(text)
    git(seed, "add", "--all")
    git(seed, "commit", "--quiet", "-m", "Seed")
    git(seed, "push", "--quiet", "origin", "HEAD:main")
    return remote


def push_from_elsewhere(remote: Path, clone: Path, name: str, text: str) -> str:
    """Another writer commits and pushes to `main` (a fresh or updated clone at `clone`)."""
    if not clone.exists():
        git(remote.parent, "clone", "--quiet", str(remote), str(clone))
    git(clone, "pull", "--quiet", "--rebase", "origin", "main")
    (clone / name).parent.mkdir(parents=True, exist_ok=True)
    (clone / name).write_text(text)
    git(clone, "add", "--all")
    git(clone, "commit", "--quiet", "-m", f"Concurrent change to {name}")
    git(clone, "push", "--quiet", "origin", "HEAD:main")
    return git(clone, "rev-parse", "HEAD")


def test_a_change_is_committed_with_its_message_and_pushed(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    message = "Deploy model 1.1.0\n\nAirflow-Dag-Id: deploy_model\nAirflow-Run-Id: manual__1\n"

    result = commit_and_push(
        f"file://{remote}",
        change=YamlValue(RELEASE, "spec.values.image.tag", "1.1.0"),
        message=message,
        author=GitIdentity(name="Deploy Bot", email="bot@example.com"),
    )

    assert result.committed is True
    assert result.attempts == 1
    assert git(remote, "rev-parse", "main") == result.commit
    assert result.as_xcom() == {
        "revision": f"main@sha1:{result.commit}",
        "commit": result.commit,
        "committed": True,
        "repository": f"file://{remote}",
        "branch": "main",
    }
    assert git(remote, "log", "-1", "--format=%B", "main") + "\n" == message
    assert git(remote, "log", "-1", "--format=%an <%ae> / %cn <%ce>", "main") == (
        "Deploy Bot <bot@example.com> / Deploy Bot <bot@example.com>"
    )
    assert git(remote, "show", f"main:{RELEASE}") + "\n" == RELEASE_TEXT.replace("1.0.0", "1.1.0")


def test_no_change_means_no_commit(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    tip = git(remote, "rev-parse", "main")

    result = commit_and_push(
        str(remote), change=YamlValue(RELEASE, "spec.values.image.tag", "1.0.0"), message="Deploy 1.0.0"
    )

    assert (result.committed, result.commit, result.attempts) == (False, tip, 0)
    assert result.revision == f"main@sha1:{tip}"
    assert git(remote, "rev-parse", "main") == tip


def test_a_retried_task_finds_the_commit_its_earlier_try_pushed(tmp_path: Path) -> None:
    """A task that pushed and then failed (or was killed) must not report "nothing committed" on retry."""
    remote = make_remote(tmp_path)
    message = "Deploy 5.0.0\n\nAirflow-Dag-Id: deploy_model\nAirflow-Run-Id: manual__5\n"
    change = YamlValue(RELEASE, "spec.values.image.tag", "5.0.0")
    first = commit_and_push(str(remote), change=change, message=message)
    push_from_elsewhere(remote, tmp_path / "other", "apps/other.yaml", "a: 1\n")

    retry = commit_and_push(str(remote), change=change, message=message)
    other_run = commit_and_push(str(remote), change=change, message=message.replace("manual__5", "manual__6"))

    assert (retry.committed, retry.commit) == (True, first.commit)
    assert other_run.committed is False
    assert git(remote, "rev-list", "--count", "main") == "3"


def test_after_a_clear_the_commit_from_before_it_is_not_taken_for_its_own(tmp_path: Path) -> None:
    """A cleared finished run must not wait again for a deploy Flux reported long ago."""
    remote = make_remote(tmp_path)
    change = YamlValue(RELEASE, "spec.values.image.tag", "7.0.0")
    ti = SimpleNamespace(dag_id="deploy_model", run_id="manual__7", map_index=-1)

    def message(clear_number: int) -> str:
        run = SimpleNamespace(clear_number=clear_number)
        return add_airflow_trailers("Deploy 7.0.0", {"ti": ti, "dag_run": run}, mark="wait_for_deploy")

    deployed = commit_and_push(str(remote), change=change, message=message(0))
    retried = commit_and_push(str(remote), change=change, message=message(0))
    cleared = commit_and_push(str(remote), change=change, message=message(1))

    assert (retried.committed, retried.commit) == (True, deployed.commit)
    assert (cleared.committed, cleared.commit) == (False, deployed.commit)


def test_a_push_rejected_by_a_concurrent_push_is_retried_on_the_new_tip(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    calls: list[str] = []
    concurrent: list[str] = []

    def change(tree: WorkTree) -> None:
        calls.append(git(tree.path, "rev-parse", "HEAD"))
        if len(calls) == 1:  # someone else pushes after our checkout and before our push
            concurrent.append(push_from_elsewhere(remote, tmp_path / "other", "apps/other.yaml", "a: 1\n"))
        YamlValue(RELEASE, "spec.values.image.tag", "2.0.0")(tree)

    result = commit_and_push(f"file://{remote}", change=change, message="Deploy 2.0.0")

    assert result.committed is True
    assert result.attempts == 2
    assert calls[1] == concurrent[0], "the second attempt starts from the concurrent push"
    assert git(remote, "rev-parse", "main~1") == concurrent[0]
    assert git(remote, "rev-parse", "main") == result.commit
    assert git(remote, "show", "main:apps/other.yaml") == "a: 1"
    assert "tag: 2.0.0" in git(remote, "show", f"main:{RELEASE}")


def test_when_the_concurrent_push_made_the_same_change_nothing_is_committed(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    same = RELEASE_TEXT.replace("1.0.0", "3.0.0")
    pushed: list[str] = []

    def change(tree: WorkTree) -> None:
        if not pushed:
            pushed.append(push_from_elsewhere(remote, tmp_path / "other", RELEASE, same))
        YamlValue(RELEASE, "spec.values.image.tag", "3.0.0")(tree)

    result = commit_and_push(f"file://{remote}", change=change, message="Deploy 3.0.0")

    assert (result.committed, result.commit, result.attempts) == (False, pushed[0], 1)


def test_racing_writers_all_land(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    writers = 4
    barrier = threading.Barrier(writers)
    results: dict[int, PushResult | BaseException] = {}

    def write(number: int) -> None:
        first = [True]

        def change(tree: WorkTree) -> None:
            (tree / f"apps/writer-{number}.yaml").write_text(f"writer: {number}\n")
            if first.pop() if first else False:
                barrier.wait(timeout=30)  # all writers checked out the same tip before anyone pushes

        try:
            results[number] = commit_and_push(
                f"file://{remote}", change=change, message=f"Writer {number}", attempts=writers
            )
        except BaseException as error:  # reported by the assertion below, with the writer's number
            results[number] = error

    threads = [threading.Thread(target=write, args=(number,)) for number in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    pushed = {n: r for n, r in results.items() if isinstance(r, PushResult)}
    assert len(pushed) == writers, results
    attempts = sorted(result.attempts for result in pushed.values())
    assert attempts[0] == 1 and attempts[-1] > 1, attempts
    files = git(remote, "ls-tree", "--name-only", "main", "apps/").splitlines()
    assert sorted(files) == ["apps/model", *[f"apps/writer-{n}.yaml" for n in range(writers)]]
    assert git(remote, "rev-list", "--count", "main") == str(writers + 1)


def test_it_gives_up_when_the_branch_keeps_moving(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    count = [0]

    def change(tree: WorkTree) -> None:
        count[0] += 1
        push_from_elsewhere(remote, tmp_path / "other", "apps/other.yaml", f"n: {count[0]}\n")
        (tree / "apps/mine.yaml").write_text(f"mine: {count[0]}\n")

    with pytest.raises(PushRejected, match="rejected 2 times"):
        commit_and_push(f"file://{remote}", change=change, message="Mine", attempts=2)

    assert count[0] == 2


def test_a_push_refused_for_another_reason_is_not_retried(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'protected branch: changes need a review' >&2\nexit 1\n")
    hook.chmod(0o755)
    count = [0]

    def change(tree: WorkTree) -> None:
        count[0] += 1
        (tree / "apps/mine.yaml").write_text("mine: 1\n")

    with pytest.raises(GitPushError, match="protected branch") as raised:
        commit_and_push(f"file://{remote}", change=change, message="Mine")

    assert not isinstance(raised.value, PushRejected)
    assert count[0] == 1


def test_a_kept_workdir_is_fetched_and_reset_before_the_change(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    workdir = tmp_path / "cache" / "fleet"
    commit_and_push(str(remote), change=YamlValue(RELEASE, "spec.values.image.tag", "1.1.0"),
                    message="One", workdir=workdir)  # fmt: skip
    (workdir / "leftover.txt").write_text("from an earlier, failed task\n")
    moved = push_from_elsewhere(remote, tmp_path / "other", "apps/other.yaml", "a: 1\n")

    result = commit_and_push(
        str(remote),
        change=YamlValue(RELEASE, "spec.values.image.tag", "1.2.0"),
        message="Two",
        workdir=workdir,
    )

    assert result.attempts == 1
    assert git(remote, "rev-parse", "main~1") == moved
    assert git(remote, "ls-tree", "--name-only", "main") == "apps"
    assert not (workdir / "leftover.txt").exists()


def test_revert_undoes_an_earlier_commit_in_a_partial_clone(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    git(remote, "config", "uploadpack.allowFilter", "true")  # so the clone really is blob-less
    deployed = commit_and_push(
        f"file://{remote}", change=YamlValue(RELEASE, "spec.values.image.tag", "9.9.9"), message="Deploy"
    )
    push_from_elsewhere(remote, tmp_path / "other", "apps/other.yaml", "a: 1\n")

    rolled_back = commit_and_push(
        f"file://{remote}", change=RevertCommit(deployed.commit), message="Roll back 9.9.9"
    )

    assert rolled_back.committed is True
    assert git(remote, "show", f"main:{RELEASE}") + "\n" == RELEASE_TEXT
    assert git(remote, "show", "main:apps/other.yaml") == "a: 1"


def test_changes_cannot_write_outside_the_work_tree(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)

    with pytest.raises(ValueError, match="outside the repository"):
        commit_and_push(str(remote), change=YamlValue("../../etc/x.yaml", "a", 1), message="Escape")


@pytest.mark.parametrize(
    "url",
    [
        "https://bot:s3cret@git.example.com/fleet.git",
        "https://s3cret@git.example.com/fleet.git",  # a token as the user name, as GitHub accepts it
        "http://:s3cret@git.example.com/fleet.git",
        "ssh://git:s3cret@git.example.com/fleet.git",
    ],
)
def test_a_url_with_credentials_is_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(ValueError, match="Airflow Connection") as raised:
        commit_and_push(url, change=[], message="x")

    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "ssh://git@git.example.com/fleet.git",
        "git@git.example.com:fleet.git",
        "https://git.example.com/fleet.git",
        "file:///srv/fleet.git",
    ],
)
def test_an_ssh_user_name_is_not_a_credential(url: str) -> None:
    refuse_credentials_in(url)


def test_credentials_from_an_airflow_connection() -> None:
    https = SimpleNamespace(login="bot", password="tok", extra_dejson={})
    ssh = SimpleNamespace(login="", password="", extra_dejson={"private_key": "KEY", "known_hosts": "h k"})

    assert GitAuth.from_connection(https) == GitAuth(username="bot", password="tok")
    assert GitAuth.from_connection(ssh) == GitAuth(ssh_private_key="KEY", ssh_known_hosts="h k")
    assert "tok" not in repr(GitAuth.from_connection(https))


def test_an_ssh_key_lives_in_a_private_file_only_while_git_runs() -> None:
    auth = GitAuth(
        ssh_private_key="-----BEGIN KEY-----\nabc\n", ssh_known_hosts="git.example.com ssh-ed25519 AAAA"
    )

    with credentials_environment(auth) as env:
        command = env["GIT_SSH_COMMAND"]
        key = Path(re.search(r"-i (\S+)", command).group(1))  # type: ignore[union-attr]
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text() == "-----BEGIN KEY-----\nabc\n"
        assert "StrictHostKeyChecking=yes" in command
        assert "abc" not in command

    assert not key.exists()


# -- HTTPS with a token, through git's own smart-HTTP server (git http-backend) ----------------------

TOKEN = "ghp_not-a-real-token-0123456789"


@pytest.fixture
async def https_remote(tmp_path: Path) -> AsyncIterator[str]:
    """The seeded bare repository served over HTTP by `git http-backend`, requiring Basic auth."""
    remote = make_remote(tmp_path)
    expected = "Basic " + base64.b64encode(f"bot:{TOKEN}".encode()).decode()

    async def serve(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        body = await request.read()
        await asyncio.sleep(0.05)  # long enough for the process scan to see git's HTTP helper
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(tmp_path),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "bot",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
        }
        backend = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        output, _ = await backend.communicate(body)
        head, _, payload = re.split(rb"(\r?\n\r?\n)", output, maxsplit=1)
        status, headers = 200, {}
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            else:
                headers[name] = value.strip()
        return web.Response(status=status, body=payload, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/{remote.name}"
    await runner.cleanup()


async def test_the_https_token_reaches_git_only_through_a_private_file(
    https_remote: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Not in any process's argv or environment, not in a log, not in `.git`, not kept by a helper.

    The worker's git config has `store` helpers, one for any host and one for exactly this
    remote's scheme://host:port: neither may be asked to save the token.
    """
    workdir = tmp_path / "work"
    secrets_parent = tmp_path / "tmp"
    secrets_parent.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(secrets_parent))
    origin = https_remote.rsplit("/", 1)[0]
    stores = tmp_path / "store-any", tmp_path / "store-this-host"
    worker_config = tmp_path / "gitconfig"
    git(tmp_path, "config", "--file", str(worker_config), "credential.helper", f"store --file={stores[0]}")
    git(tmp_path, "config", "--file", str(worker_config), f"credential.{origin}.helper",
        f"store --file={stores[1]}")  # fmt: skip
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(worker_config))
    caplog.set_level(logging.DEBUG)

    with ProcessWatch(TOKEN) as watch:
        result = await asyncio.to_thread(
            commit_and_push,
            https_remote,
            change=YamlValue(RELEASE, "spec.values.image.tag", "1.5.0"),
            message="Deploy 1.5.0",
            auth=GitAuth(username="bot", password=TOKEN),
            workdir=workdir,
        )

    assert result.committed is True
    assert git(tmp_path / "remote.git", "rev-parse", "main") == result.commit
    assert watch.seen_git_http, "the process scan did not run while git talked HTTP"
    assert watch.leaks == []
    assert not any(store.exists() for store in stores)
    assert list(secrets_parent.iterdir()) == [], "the password file outlives the push"
    stored = "".join(p.read_text(errors="replace") for p in (workdir / ".git").glob("*") if p.is_file())
    assert TOKEN not in stored
    assert f"pushed {result.commit}" in caplog.text
    output = capfd.readouterr()
    assert TOKEN not in caplog.text + output.out + output.err


@pytest.mark.parametrize(
    "inherited",
    [
        {},
        # A worker environment that traces git unredacted, or points it at another repository.
        {"GIT_TRACE_CURL": "1", "GIT_TRACE_REDACT": "0", "GIT_DIR": "/nonexistent/elsewhere.git"},
    ],
    ids=["plain", "tracing-worker"],
)
async def test_a_wrong_token_fails_without_showing_it(
    https_remote: str, inherited: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in inherited.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(GitPushError) as raised:
        await asyncio.to_thread(
            commit_and_push,
            https_remote,
            change=YamlValue(RELEASE, "spec.values.image.tag", "1.5.0"),
            message="Deploy 1.5.0",
            auth=GitAuth(username="bot", password="wrong-token"),
        )

    assert "git clone" in str(raised.value)
    assert "Authentication failed" in str(raised.value)
    assert "wrong-token" not in str(raised.value)
    assert base64.b64encode(b"bot:wrong-token").decode() not in str(raised.value)
