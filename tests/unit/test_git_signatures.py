"""Signed commits: with `allowed_signers_file`, only commits signed by a listed key count."""

from __future__ import annotations

from pathlib import Path

from receiver.config import GitRepository
from receiver.git import Mirror
from tests.gitops import GitOpsRepo, ssh_signing_key


async def test_only_commits_signed_by_an_allowed_key_pass(tmp_path: Path) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    trusted, trusted_line = ssh_signing_key(tmp_path / "keys", "release-bot")
    stranger, _ = ssh_signing_key(tmp_path / "keys", "stranger")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(trusted_line)
    signed = repo.commit({"apps/a.yaml": "a: 1\n"}, "signed", signing_key=trusted)
    unsigned = repo.commit({"apps/a.yaml": "a: 2\n"}, "unsigned")
    foreign = repo.commit({"apps/a.yaml": "a: 3\n"}, "signed by a stranger", signing_key=stranger)
    mirror = Mirror(
        GitRepository(name="flux-system/fleet", url=repo.url, allowed_signers_file=allowed),
        tmp_path / "cache",
        fetch_timeout_seconds=30,
    )
    await mirror.resolve(foreign)

    assert await mirror.signature_problem(signed) is None
    assert "no signature" in (await mirror.signature_problem(unsigned) or "")
    assert "No principal matched" in (await mirror.signature_problem(foreign) or "")


async def test_repositories_without_a_signers_file_accept_every_commit(tmp_path: Path) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    unsigned = repo.commit({"apps/a.yaml": "a: 1\n"}, "unsigned")
    mirror = Mirror(GitRepository(name="flux-system/fleet", url=repo.url), tmp_path / "cache", 30)
    await mirror.resolve(unsigned)
    assert await mirror.signature_problem(unsigned) is None
