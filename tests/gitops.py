"""A small GitOps repository for tests: a bare "remote" (what Flux and Fluxback fetch) and a
work tree that commits with trailers and pushes, the way an Airflow task would."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GIT_AUTHOR_NAME": "airflow", "GIT_AUTHOR_EMAIL": "airflow@example.com",
             "GIT_COMMITTER_NAME": "airflow", "GIT_COMMITTER_EMAIL": "airflow@example.com"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


class GitOpsRepo:
    """A bare remote (what Flux and Fluxback fetch) and a clone that commits and pushes."""

    def __init__(self, root: Path) -> None:
        self.remote = root / "fleet.git"
        self.work = root / "work"
        root.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "--initial-branch=main", str(self.remote), cwd=root)
        git("config", "uploadpack.allowFilter", "true", cwd=self.remote)
        git("clone", str(self.remote), str(self.work), cwd=root)
        git("checkout", "-B", "main", cwd=self.work)
        self.commit({"README.md": "fleet\n"}, "initial layout")

    @property
    def url(self) -> str:
        return f"file://{self.remote}"

    def commit(
        self,
        files: Mapping[str, str],
        subject: str,
        trailers: Mapping[str, str | Sequence[str]] = {},
        signing_key: Path | None = None,
    ) -> str:
        """Write `files`, commit with `trailers` (a list value repeats the key), push; returns the sha.

        With `signing_key` (an SSH private key file) the commit is SSH-signed.
        """
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git("add", "-A", cwd=self.work)
        lines = []
        for key, value in trailers.items():
            values = [value] if isinstance(value, str) else list(value)
            lines += [f"{key}: {v}" for v in values]
        message = subject + ("\n\n" + "\n".join(lines) if lines else "")
        signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={signing_key}"] if signing_key else []
        git(*signing, "commit", "-q", *(["-S"] if signing_key else []), "-m", message, cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def side_branch_commit(
        self, branch: str, files: Mapping[str, str], subject: str, trailers: Mapping[str, str] = {}
    ) -> str:
        """A commit pushed to another branch, off main's tip; main is checked out again afterwards."""
        git("checkout", "-q", "-b", branch, cwd=self.work)
        try:
            for name, content in files.items():
                (self.work / name).parent.mkdir(parents=True, exist_ok=True)
                (self.work / name).write_text(content)
            git("add", "-A", cwd=self.work)
            body = "\n".join(f"{key}: {value}" for key, value in trailers.items())
            git("commit", "-q", "-m", subject + (f"\n\n{body}" if body else ""), cwd=self.work)
            git("push", "-q", "origin", branch, cwd=self.work)
            return git("rev-parse", "HEAD", cwd=self.work)
        finally:
            git("checkout", "-q", "main", cwd=self.work)

    @staticmethod
    def revision(sha: str) -> str:
        return f"main@sha1:{sha}"


def ssh_signing_key(folder: Path, name: str) -> tuple[Path, str]:
    """A new SSH key to sign commits with, and its line for an allowed-signers file."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
        check=True,
        capture_output=True,
    )
    public = key.with_suffix(".pub").read_text().split()
    return key, f"{name}@example.com {public[0]} {public[1]}\n"
