"""What an operator sees after a real loop run (real Airflow, real git, Fluxback as a process):
`fluxback deliveries` in a terminal, and the status page in a real headless Chromium.

The screenshot is kept under test-artifacts/ (not committed) for a person to look at."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import Page, dump_dom, screenshot, text
from tests.gitops import GitOpsRepo
from tests.integration.airflow_harness import AirflowServer
from tests.integration.fluxback_service import REPO_ROOT, FluxbackService
from tests.integration.test_loop import (  # noqa: F401 - fixtures are found by name
    WAIT_DAG,
    WAIT_TASK,
    StartFluxback,
    airflow_ready,
    gitops,
    start_fluxback,
    trailers,
    waiting_run,
)

pytestmark = pytest.mark.integration

ARTIFACTS = REPO_ROOT / "test-artifacts"
HOSTILE_SUBJECT = "deploy <img src=x onerror=alert(1)> & </td><script>alert(2)</script>"


def fluxback_cli(service: FluxbackService, *argv: str) -> str:
    """The real command, run the way an operator would, next to the running service."""
    config = str(service.root / "fluxback.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "deliveries", "--config", config, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_the_command_and_the_page_say_what_happened_and_why(
    airflow_ready: AirflowServer,  # noqa: F811
    gitops: GitOpsRepo,  # noqa: F811
    start_fluxback: StartFluxback,  # noqa: F811
    tmp_path: Path,
) -> None:
    marked_run, finished_run = await waiting_run(airflow_ready), await waiting_run(airflow_ready)
    airflow_ready.api(
        "PATCH",
        f"/dags/{WAIT_DAG}/dagRuns/{finished_run}/taskInstances/{WAIT_TASK}",
        {"new_state": "success"},
    )
    fluxback = start_fluxback()
    marked = gitops.commit({"apps/a.yaml": "v: 1\n"}, HOSTILE_SUBJECT, trailers(marked_run))
    ids = {"marked": await fluxback.report(marked)}
    await fluxback.wait_delivery(ids["marked"])
    already = gitops.commit({"apps/b.yaml": "v: 2\n"}, "deploy again", trailers(finished_run))
    ids["already"] = await fluxback.report(already)
    await fluxback.wait_delivery(ids["already"])
    unknown = gitops.commit({"apps/c.yaml": "v: 3\n"}, "orphan", trailers("no_such_run"))
    ids["unknown"] = await fluxback.report(unknown)
    await fluxback.wait_delivery(ids["unknown"])
    refused = gitops.commit({"apps/d.yaml": "v: 4\n"}, "sneaky", trailers("r1", dag_id="deploy_other"))
    ids["refused"] = await fluxback.report(refused)
    await fluxback.wait_delivery(ids["refused"])

    # The one command.
    table = fluxback_cli(fluxback, "--revision", marked[:12]).splitlines()
    assert len(table) == 2 and table[1].split()[:2] == [str(ids["marked"]), "done"]
    assert table[1].endswith(f"acted: task {WAIT_TASK} of {WAIT_DAG} run {marked_run}: marked success")
    row = fluxback_cli(fluxback, "--revision", already).splitlines()[1]
    assert row.endswith(f"already: task {WAIT_TASK} of {WAIT_DAG} run {finished_run}: task already success")
    row = fluxback_cli(fluxback, "--revision", unknown).splitlines()[1]
    assert "action_failed: Airflow 404: dag run not found: dag fluxback_wait run no_such_run" in row
    row = fluxback_cli(fluxback, "--revision", refused).splitlines()[1]
    assert row.endswith("refused: DAG 'deploy_other' (instance 'default') not allowed for"
                        " Kustomization/flux-system/apps by the policy")  # fmt: skip
    story = fluxback_cli(fluxback, "show", str(ids["marked"]))
    task_url = f"{airflow_ready.url}/dags/{WAIT_DAG}/runs/{marked_run}/tasks/{WAIT_TASK}"
    assert f"Airflow-Run-Id: {marked_run}" in story and f"task {WAIT_TASK}: {task_url}" in story
    assert f"mark_task done after 1 attempt(s): task {WAIT_TASK} of {WAIT_DAG} run {marked_run}" in story

    # The page, in a browser.
    page = Page(dump_dom(f"{fluxback.url}/", tmp_path / "profile-list"))
    assert page.find("script") == [] and page.find("img") == []
    rows = {r.attrs["data-id"]: r for r in page.find("tr", class_="delivery")}
    assert list(rows) == [str(ids[k]) for k in ("refused", "unknown", "already", "marked")]
    first = rows[str(ids["marked"])]
    assert f"acted: task {WAIT_TASK} of {WAIT_DAG} run {marked_run}: marked success" in text(first)
    run_url = f"{airflow_ready.url}/dags/{WAIT_DAG}/runs/{marked_run}"
    assert (f"{WAIT_DAG} run {marked_run}", run_url) in first.links
    assert (f"task {WAIT_TASK}", task_url) in first.links
    assert f"already: task {WAIT_TASK} of {WAIT_DAG} run {finished_run}: task already success" in text(
        rows[str(ids["already"])]
    )
    assert "action_failed: Airflow 404" in text(rows[str(ids["unknown"])])
    assert "refused: DAG 'deploy_other'" in text(rows[str(ids["refused"])])

    filtered_url = f"{fluxback.url}/?revision={unknown[:10]}&state=done"
    filtered = Page(dump_dom(filtered_url, tmp_path / "profile-filter"))
    assert [r.attrs["data-id"] for r in filtered.find("tr", class_="delivery")] == [str(ids["unknown"])]

    told = Page(dump_dom(f"{fluxback.url}/deliveries/{ids['marked']}/story", tmp_path / "profile-story"))
    assert told.find("script") == [] and told.find("img") == []
    assert HOSTILE_SUBJECT in told.by_id("commits").text
    assert (f"task {WAIT_TASK}", task_url) in told.by_id("actions").links
    acted = f"acted: task {WAIT_TASK} of {WAIT_DAG} run {marked_run}: marked success"
    assert text(told.by_id("why")) == acted

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot(f"{fluxback.url}/", tmp_path / "profile-shot", ARTIFACTS / "status-page.png")
    story_url = f"{fluxback.url}/deliveries/{ids['marked']}/story"
    screenshot(story_url, tmp_path / "profile-shot2", ARTIFACTS / "story-page.png")
