"""Why each delivery ended as it did, from deliveries the real worker handled (real git, a real
journal; Airflow is down here, so the answers that need Airflow are in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from receiver.cli import main
from receiver.explain import AirflowLinks
from receiver.journal.sqlite import SqliteJournal
from receiver.metrics import Metrics
from receiver.service import worker_service
from tests.gitops import GitOpsRepo
from tests.helpers import running
from tests.unit.test_worker import post, until_state, worker_config

pytestmark = pytest.mark.usefixtures("reset_logging")  # the CLI configures logging for the process

TRAILERS = {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"}


def cli_config(tmp_path: Path) -> Path:
    """The journal the service writes, for `fluxback deliveries` next to it."""
    path = tmp_path / "cli.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "journal": f"sqlite://{tmp_path}/journal.db",
                "airflow": {
                    "instances": {
                        "default": {"url": "http://airflow.example:8080/", "token_file": "/nonexistent"}
                    }
                },
            }
        )
    )
    return path


async def fluxback(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The command's output; in a thread because it runs its own event loop."""
    capsys.readouterr()  # the service's log lines
    assert await asyncio.to_thread(main, list(argv)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


async def test_each_delivery_says_why_in_the_list_the_cli_and_the_story(
    tmp_path: Path, journal: SqliteJournal, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    plain = repo.commit({"apps/a.yaml": "a: 1\n"}, "no trailers here")
    config = worker_config(tmp_path, repo, max_attempts=1)
    metrics = Metrics()
    async with running(
        config, journal, metrics=metrics, background=[worker_service(config, journal, metrics)]
    ) as service:

        async def settled(delivery_id: int) -> dict[str, Any]:
            return await until_state(service, delivery_id, "done", "dead")

        ids: dict[str, int] = {}
        ids["progress"] = await post(service, plain, reason="Progressing", message="configured")
        ids["unmapped"] = await post(service, plain, name="other")
        ids["no_commit"] = await post(service, None, name="apps")
        ids["untagged"] = await post(service, plain)
        await settled(ids["untagged"])
        ids["heartbeat"] = await post(service, plain, message="Reconciliation finished in 9.9s")
        refused = repo.commit({"apps/a.yaml": "a: 2\n"}, "sneaky", TRAILERS | {"Airflow-Dag-Id": "x"})
        ids["refused"] = await post(service, refused)
        await settled(ids["refused"])
        ids["failed_again"] = await post(service, plain, reason="HealthCheckFailed", severity="error")
        await settled(ids["failed_again"])
        ids["applied_again"] = await post(service, refused, message="the same revision, after a failure")
        dead = repo.commit({"apps/a.yaml": "a: 3\n"}, "deploy", TRAILERS)
        ids["dead"] = await post(service, dead)
        for delivery_id in ids.values():
            await settled(delivery_id)

        status, listed = await service.get("/deliveries", params={"limit": "50"})
        assert status == 200
        why = {d["id"]: d["why"] for d in listed["deliveries"]}

    def says(name: str) -> tuple[str, str]:
        return why[ids[name]]["cause"], why[ids[name]]["text"]

    assert says("progress") == ("not_actionable", "Progressing is a progress event: nothing to act on")
    assert says("unmapped")[0] == "no_repository"
    assert "no git repository configured for Kustomization/flux-system/other" in says("unmapped")[1]
    assert says("no_commit")[0] == "no_commit"
    assert says("untagged") == ("no_trailers", "no Airflow trailers in the 1 commit(s) it made live")
    assert says("heartbeat") == (
        "duplicate",
        f"duplicate of {ids['untagged']} (same object, revision, outcome)",
    )
    assert says("refused") == (
        "refused",
        "DAG 'x' (instance 'default') not allowed for Kustomization/flux-system/apps by the policy",
    )
    assert says("applied_again") == (
        "nothing_new",
        f"revision {refused[:12]} was already applied: nothing new",
    )
    cause, text = says("dead")
    assert cause == "dead" and text.startswith("dead after 1 attempt(s): Airflow at http://127.0.0.1:")

    path = str(cli_config(tmp_path))
    rows = (await fluxback(capsys, "deliveries", "--config", path, "--revision", refused[:10])).splitlines()
    assert rows[0].split()[-1] == "WHY"
    assert [row.split()[0] for row in rows[1:]] == [str(ids["applied_again"]), str(ids["refused"])]
    assert rows[1].endswith(f"nothing_new: revision {refused[:12]} was already applied: nothing new")
    assert rows[2].endswith("refused: DAG 'x' (instance 'default') not allowed for"
                            " Kustomization/flux-system/apps by the policy")  # fmt: skip

    scripted = json.loads(
        await fluxback(capsys, "deliveries", "--config", path, "--state", "dead", "-o", "json")
    )
    assert [(d["id"], d["why"]["cause"]) for d in scripted] == [(ids["dead"], "dead")]

    told = await fluxback(capsys, "deliveries", "--config", path, "show", str(ids["dead"]))
    assert f"delivery {ids['dead']}: dead" in told
    assert f"{dead[:12]}" in told and "Airflow-Run-Id: r1" in told and "Airflow-Task-Id: wait" in told
    assert "-> authored by deploy run r1" in told
    assert "task wait: http://airflow.example:8080/dags/deploy/runs/r1/tasks/wait" in told
    assert "dead letter after 1 attempt(s)" in told
    story = json.loads(
        await fluxback(capsys, "deliveries", "--config", path, "show", str(ids["dead"]), "-o", "json")
    )
    assert story["correlations"][0]["links"][0] == {
        "text": "deploy run r1",
        "url": "http://airflow.example:8080/dags/deploy/runs/r1",
    }
    assert story["event"]["involvedObject"]["name"] == "apps"

    verbose = await fluxback(
        capsys, "deliveries", "--config", path, "--object", "Kustomization/flux-system/other", "-v"
    )
    assert verbose.startswith(f"delivery {ids['unmapped']}: done") and "decisions (1)" in verbose


def test_show_needs_one_known_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(cli_config(tmp_path))
    asyncio.run(_create_journal(tmp_path))
    assert main(["deliveries", "--config", path, "show", "7"]) == 1
    assert capsys.readouterr().err == "error: delivery 7: no such delivery\n"
    for words in (["show"], ["show", "x"], ["shw", "7"], ["show", "\u0661"]):
        assert main(["deliveries", "--config", path, *words]) == 2
        assert "usage: fluxback deliveries show ID" in capsys.readouterr().err


async def _create_journal(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db")
    await journal.open()
    await journal.close()


def test_links_name_one_path_segment_each() -> None:
    links = AirflowLinks({"prod": "https://airflow.example/base/"})
    run = links.run("prod", "deploy", "manual__2026-11-25T08:00:00+00:00")
    assert run is not None
    assert (
        run.url == "https://airflow.example/base/dags/deploy/runs/manual__2026-11-25T08%3A00%3A00%2B00%3A00"
    )
    task = links.task("prod", "d", "../x", "t/../y", 3)
    assert (
        task is not None
        and task.url == "https://airflow.example/base/dags/d/runs/..%2Fx/tasks/t%2F..%2Fy/mapped/3"
    )
    assert links.run("staging", "d", "r") is None
    dots = links.run("prod", "d", "..")
    assert dots is not None and dots.url.endswith("/dags/d/runs/%2E%2E")
