"""The status page from deliveries the real worker handled: rows, filters, the story page, and
escaping of everything that came from an event or a commit (the browser test is in
tests/integration/test_status_page.py)."""

from __future__ import annotations

import json
from pathlib import Path

from receiver.journal.sqlite import SqliteJournal
from receiver.metrics import Metrics
from receiver.service import worker_service
from tests.browser import Page, text
from tests.gitops import GitOpsRepo
from tests.helpers import Service, running
from tests.unit.test_worker import post, until_state, worker_config

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_SUBJECT = "</td><script>alert('commit')</script><td>"
HOSTILE_MESSAGE = '<svg onload=alert(2)> & "quotes"'


async def html(service: Service, path: str, status: int = 200) -> str:
    async with service.session.get(f"{service.url}{path}") as answer:
        assert answer.status == status, await answer.text()
        assert answer.content_type == "text/html"
        assert "script-src" not in answer.headers["Content-Security-Policy"]  # default-src 'none' covers it
        return await answer.text()


async def test_rows_filters_and_story_escape_what_came_from_outside(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    repo = GitOpsRepo(tmp_path / "git")
    trailers = {"Airflow-Dag-Id": "x<b>", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"}
    sha = repo.commit({"apps/a.yaml": "a: 1\n"}, HOSTILE_SUBJECT, trailers)
    config = worker_config(tmp_path, repo)
    metrics = Metrics()
    async with running(
        config, journal, metrics=metrics, background=[worker_service(config, journal, metrics)]
    ) as service:
        refused = await post(service, sha, message=HOSTILE_MESSAGE)
        stranger = await post(service, sha, name=HOSTILE_NAME)
        for delivery_id in (refused, stranger):
            await until_state(service, delivery_id, "done")

        listing = await html(service, "/")
        filtered = await html(service, "/?object=Kustomization/flux-system/apps&state=done")
        story = await html(service, f"/deliveries/{refused}/story")
        bad = await html(service, "/?state=lost", 400)
        missing = await html(service, "/deliveries/999/story", 404)

    for dom in (listing, filtered, story):
        page = Page(dom)
        assert page.find("script") == [] and page.find("img") == [] and page.find("svg") == []
        assert page.find("b") == []
    rows = Page(listing).find("tr", class_="delivery")
    assert [r.attrs["data-id"] for r in rows] == [str(stranger), str(refused)]
    assert f"Kustomization/flux-system/{HOSTILE_NAME}" in text(rows[0])
    assert ("no_repository: no git repository configured for "
            f"Kustomization/flux-system/{HOSTILE_NAME}") in text(rows[0])  # fmt: skip
    assert "refused: DAG 'x<b>' (instance 'default') not allowed" in text(rows[1])
    assert (str(refused), f"deliveries/{refused}/story") in rows[1].links
    assert ("Kustomization/flux-system/apps", "?object=Kustomization/flux-system/apps") in rows[1].links
    assert [r.attrs["data-id"] for r in Page(filtered).find("tr", class_="delivery")] == [str(refused)]

    told = Page(story)
    assert text(told.by_id("why")).startswith("refused: DAG 'x<b>'")
    commits = told.by_id("commits")
    assert HOSTILE_SUBJECT in commits.text and "Airflow-Dag-Id: x<b>" in text(commits)
    assert json.loads(told.by_id("event").text)["message"] == HOSTILE_MESSAGE
    assert ("← all deliveries", "../../") in told.elements[0].links
    assert "state: must be one of" in text(Page(bad).by_id("error"))
    assert "no delivery 999" in missing
