"""The git credential environment shared by the service's mirrors and the DAG side, run by real git."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from receiver.git_credentials import (
    REPOSITORY_VARIABLES,
    git_environment,
    origin,
    password_helper,
    ssh_command,
)
from tests.helpers import ProcessWatch

SECRET = "s3cr3t-token-for-the-helper-0123456789"


def _fill(env: dict[str, str], url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """What `git credential fill` (the step git runs before sending a password) answers for `url`."""
    return subprocess.run(
        ["git", "credential", "fill"],
        input=f"url={url}\n\n",
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose global git config has a `store` helper that must never be asked."""
    config = tmp_path / "gitconfig"
    config.write_text(f"[credential]\n\thelper = store --file={tmp_path / 'store'}\n")
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_GLOBAL": str(config)}


def test_the_helper_answers_from_the_file_through_a_pipe(tmp_path: Path, worker_env: dict[str, str]) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(f" {SECRET} \nsecond line\n")
    env = git_environment("setup", worker_env) | password_helper("bot", password_file, only_for=None)

    with ProcessWatch(SECRET) as watch:
        answer = _fill(env, "https://git.example.com/fleet.git", tmp_path)

    assert answer.returncode == 0, answer.stderr
    assert f"username=bot\npassword= {SECRET} \n" in answer.stdout  # the first line, exactly
    assert watch.leaks == []
    assert SECRET not in "".join(env.values())
    assert not (tmp_path / "store").exists()


def test_a_scoped_helper_answers_only_its_origin(tmp_path: Path, worker_env: dict[str, str]) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(SECRET)
    scope = origin("https://git.example.com:8443/acme/fleet.git")
    env = git_environment("nothing", worker_env) | password_helper("git", password_file, only_for=scope)

    mine = _fill(env, "https://git.example.com:8443/acme/other.git", tmp_path)
    elsewhere = _fill(env, "https://attacker.example.com/fleet.git", tmp_path)

    assert mine.returncode == 0 and f"username=git\npassword={SECRET}\n" in mine.stdout
    assert elsewhere.returncode != 0  # no helper answers and prompts are off: git gives up
    assert SECRET not in elsewhere.stdout + elsewhere.stderr
    assert not (tmp_path / "store").exists()


def test_origin_drops_user_info_and_path() -> None:
    assert origin("https://user@git.example.com:8443/a/b.git") == "https://git.example.com:8443"
    assert origin("http://127.0.0.1/x.git") == "http://127.0.0.1"


def test_what_each_side_inherits_from_its_environment() -> None:
    environ = {
        "PATH": "/bin",
        "GIT_DIR": "/elsewhere.git",
        "GIT_CONFIG_PARAMETERS": "'remote.origin.url'='file:///elsewhere.git'",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "store",
        "GIT_TRACE_CURL": "1",
        "GIT_CURL_VERBOSE": "1",
        "GIT_SSL_CAINFO": "/etc/ssl/corporate.pem",
        "GIT_CONFIG_GLOBAL": "/home/airflow/.gitconfig",
        "GIT_TERMINAL_PROMPT": "1",
    }
    assert git_environment("nothing", environ) == {"PATH": "/bin", "GIT_TERMINAL_PROMPT": "0"}
    assert git_environment("setup", environ) == {
        "PATH": "/bin",
        "GIT_SSL_CAINFO": "/etc/ssl/corporate.pem",
        "GIT_CONFIG_GLOBAL": "/home/airflow/.gitconfig",
        "GIT_TERMINAL_PROMPT": "0",
    }


def test_the_repository_variables_are_gits_own_list(tmp_path: Path) -> None:
    listed = subprocess.run(
        ["git", "rev-parse", "--local-env-vars"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert listed
    assert set(listed) <= REPOSITORY_VARIABLES


def test_an_inherited_git_dir_does_not_redirect_git(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "--quiet", str(tmp_path / "work")], check=True)
    subprocess.run(["git", "init", "--quiet", "--bare", str(tmp_path / "elsewhere.git")], check=True)
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_DIR": str(tmp_path / "elsewhere.git")}
    found = subprocess.run(
        ["git", "rev-parse", "--absolute-git-dir"],
        cwd=tmp_path / "work",
        env=git_environment("setup", environ),
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == str(tmp_path / "work" / ".git")


def test_ssh_commands(tmp_path: Path) -> None:
    key = tmp_path / "id ed25519"
    base = ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    assert shlex.split(ssh_command(key)) == base
    assert shlex.split(ssh_command(key, tmp_path / "known hosts")) == [
        *base, "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={tmp_path / 'known hosts'}",
    ]  # fmt: skip
    first_seen = tmp_path / "cache" / "known_hosts"
    assert shlex.split(ssh_command(key, first_seen_hosts_file=first_seen)) == [
        *base, "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={first_seen}",
    ]  # fmt: skip
    assert ssh_command(key, tmp_path / "k", first_seen_hosts_file=first_seen).count("accept-new") == 0
