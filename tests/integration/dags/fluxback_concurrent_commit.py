"""`GitCommitOperator` racing another writer: the change pushes a commit from a second clone the
first time it runs, after the operator checked out the branch and before it pushes, so the
operator's first push is rejected and it must retry on the new tip."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from airflow.sdk import DAG, Param

from receiver.dags import GitCommitOperator, WorkTree, YamlValue


@dataclass
class RaceAnotherWriter:
    """Set `file`'s `tag` to `value`; on the first call, first let another clone push to `remote`."""

    template_fields: ClassVar[tuple[str, ...]] = ("remote", "value")
    remote: str
    value: str
    calls: int = 0

    def __call__(self, tree: WorkTree) -> None:
        self.calls += 1
        if self.calls == 1:
            with tempfile.TemporaryDirectory() as scratch:
                other = Path(scratch) / "other"
                identity = ["-c", "user.name=Other writer", "-c", "user.email=other@example.com"]
                subprocess.run(["git", "clone", "--quiet", self.remote, str(other)], check=True)
                (other / "concurrent.txt").write_text("pushed by another writer\n")
                subprocess.run(["git", "-C", str(other), "add", "--all"], check=True)
                subprocess.run(
                    ["git", "-C", str(other), *identity, "commit", "-qm", "Concurrent"], check=True
                )
                subprocess.run(
                    ["git", "-C", str(other), "push", "--quiet", "origin", "HEAD:main"], check=True
                )
        YamlValue("ml/model-server/release.yaml", "spec.values.image.tag", self.value)(tree)


with DAG(
    dag_id="fluxback_concurrent_commit",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["fluxback-test"],
    params={"git_conn_id": Param("", type="string"), "remote": Param("", type="string")},
):
    GitCommitOperator(
        task_id="commit",
        git_conn_id="{{ params.git_conn_id }}",
        change=RaceAnotherWriter(remote="{{ params.remote }}", value="v4.0.0"),
        message="Deploy model 4.0.0 while someone else pushes",
    )
