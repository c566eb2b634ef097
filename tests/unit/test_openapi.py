"""docs/openapi.yaml describes what the service really answers: real responses of every
endpoint and status, from the real app on loopback, validated against it (the schemathesis
run against the running service is tests/integration/test_openapi_fuzz.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import requests
import schemathesis
import yaml

from receiver.journal.sqlite import SqliteJournal
from receiver.metrics import Metrics
from receiver.service import worker_service
from tests.flux_replay import event_body, flux_headers
from tests.gitops import GitOpsRepo
from tests.helpers import ADMIN_TOKEN, HMAC_KEY, running
from tests.unit.test_worker import post, until_state, worker_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


async def test_every_endpoint_answers_as_described(tmp_path: Path, journal: SqliteJournal) -> None:
    schema = schemathesis.openapi.from_path(str(DOCS))
    repo = GitOpsRepo(tmp_path / "git")
    trailers = {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"}
    sha = repo.commit({"apps/a.yaml": "a: 1\n"}, "deploy", trailers)
    config = worker_config(tmp_path, repo, max_attempts=1)
    metrics = Metrics()
    checked: list[tuple[str, str, int]] = []
    async with running(
        config, journal, metrics=metrics, background=[worker_service(config, journal, metrics)]
    ) as service:
        dead = await post(service, sha)
        await until_state(service, dead, "dead")  # with a commit, a correlation, an action, links
    async with running(config, journal) as service:  # no worker now: what is posted stays pending
        pending = await post(service, None, name="later")

        async def call(method: str, path: str, template: str, status: int, **kwargs: Any) -> Any:
            answer = await asyncio.to_thread(
                requests.request, method, f"{service.url}{path}", timeout=10, **kwargs
            )
            assert answer.status_code == status, (method, path, answer.text)
            schema[template][method].validate_response(answer)
            checked.append((template, method, status))
            return answer

        body = event_body(name="described")
        await call(
            "POST",
            "/flux/events",
            "/flux/events",
            202,
            data=body,
            headers=flux_headers(body, hmac_key=HMAC_KEY),
        )
        await call(
            "POST",
            "/flux/events",
            "/flux/events",
            400,
            data=b"{}",
            headers=flux_headers(b"{}", hmac_key=HMAC_KEY),
        )
        await call(
            "POST",
            "/flux/events",
            "/flux/events",
            401,
            data=body,
            headers={"Content-Type": "application/json"},
        )
        await call(
            "POST", "/flux/events", "/flux/events", 415, data=body, headers={"Content-Type": "text/plain"}
        )
        await call("GET", "/healthz", "/healthz", 200)
        await call("GET", "/readyz", "/readyz", 200)
        await call("GET", "/healthz/details", "/healthz/details", 200)
        await call("GET", "/metrics", "/metrics", 200)
        listed = await call("GET", "/deliveries", "/deliveries", 200, params={"limit": "2"})
        assert listed.json()["next_before"] is not None
        await call("GET", "/deliveries", "/deliveries", 400, params={"state": "lost"})
        story = await call("GET", f"/deliveries/{dead}", "/deliveries/{id}", 200)
        assert story.json()["actions"][0]["links"] and story.json()["correlations"][0]["links"]
        await call("GET", "/deliveries/4242", "/deliveries/{id}", 404)
        replay = "/deliveries/{id}/replay"
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        await call("POST", f"/deliveries/{dead}/replay", replay, 401)
        await call(
            "POST", f"/deliveries/{dead}/replay", replay, 403, headers={"Authorization": "Bearer nope"}
        )
        await call("POST", "/deliveries/4242/replay", replay, 404, headers=admin)
        await call("POST", f"/deliveries/{pending}/replay", replay, 409, headers=admin)
        await call("POST", f"/deliveries/{dead}/replay", replay, 202, headers=admin)
        await call("GET", "/", "/", 200)
        await call("GET", "/", "/", 400, params={"object": "nope"})
        await call("GET", f"/deliveries/{dead}/story", "/deliveries/{id}/story", 200)
        await call("GET", "/deliveries/4242/story", "/deliveries/{id}/story", 404)
        served = await call("GET", "/openapi.yaml", "/openapi.yaml", 200)
        assert yaml.safe_load(served.content) == yaml.safe_load(DOCS.read_bytes())

    documented = {
        (path, method.upper(), int(status))
        for path, item in yaml.safe_load(DOCS.read_text())["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }
    # Not produced here on purpose: a journal that cannot be read or a body too slow (503) and a
    # body too large (413) are shown in tests/unit/test_ops.py, test_ingest.py and tests/reliability.
    shown_elsewhere = {413, 503}
    missing = {d for d in documented if d[2] not in shown_elsewhere} - set(checked)
    assert missing == set(), json.dumps(sorted(missing))
