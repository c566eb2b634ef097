"""Health, readiness, metrics and the deliveries API over real HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from receiver.journal import AppendResult, DeliveryState, JournalUnavailable, NewDelivery
from receiver.journal.sqlite import SqliteJournal
from tests.flux_replay import event_body, payload
from tests.helpers import ADMIN_TOKEN, Service, make_config, running

SHA = "3b9f1c2a7d4e5f60718293a4b5c6d7e8f9012345"
METRIC_NAMES = (
    "fluxback_events_received_total",
    "fluxback_http_request_duration_seconds",
    "fluxback_journal_depth",
    "fluxback_actions_total",
    "fluxback_airflow_request_seconds",
    "fluxback_worker_lag_seconds",
    "fluxback_dead_letters_total",
    "fluxback_event_to_action_seconds",
    "fluxback_commit_to_live_seconds",
    "fluxback_git_fetches_total",
)


async def test_healthz(service: Service) -> None:
    assert await service.get("/healthz") == (200, {"status": "ok"})


async def test_readyz(service: Service) -> None:
    assert await service.get("/readyz") == (200, {"status": "ready"})


async def test_a_worker_side_secret_does_not_make_the_pod_unready(
    tmp_path: Path, journal: SqliteJournal
) -> None:
    """Readiness means "can accept and journal events"; the admin token, Airflow and git
    credentials only affect the worker and show in /healthz/details and the metrics."""
    password = tmp_path / "airflow-password"
    password.write_text("pw")
    config = make_config(
        tmp_path,
        airflow={"instances": {"default": {"url": "http://airflow:8080", "token_file": str(password)}}},
    )
    password.unlink()
    os.remove(config.admin_tokens[0])
    async with running(config, journal) as svc:
        assert await svc.get("/readyz") == (200, {"status": "ready"})
        status, details = await svc.get("/healthz/details")
        status_202, _, _ = await svc.post_event(event_body())
        async with svc.session.get(f"{svc.url}/metrics") as response:
            text = await response.text()
    assert status == 200 and status_202 == 202
    assert details["ready"] is True
    failing = {c["name"]: c for c in details["checks"] if not c["ok"]}
    assert set(failing) == {"admin_tokens[0]", "airflow.instances.default.token_file"}
    assert all(c["affects"] == "worker" and "cannot read file" in c["problem"] for c in failing.values())
    assert "fluxback_ready 1.0" in text
    assert 'fluxback_health_check{check="admin_tokens[0]"} 0.0' in text
    assert 'fluxback_health_check{check="journal"} 1.0' in text


@pytest.mark.parametrize("content", [b"", b" \n\t"])
async def test_a_blank_hmac_key_makes_the_pod_unready(
    tmp_path: Path, journal: SqliteJournal, content: bytes
) -> None:
    config = make_config(tmp_path, webhook={"bearer_tokens": []})
    config.webhook.hmac_keys[0].write_bytes(content)
    async with running(config, journal) as svc:
        status, answer = await svc.get("/readyz")
        posted, _, headers = await svc.post_event(event_body())
        async with svc.session.get(f"{svc.url}/metrics") as response:
            text = await response.text()
    assert status == 503
    assert "webhook.hmac_keys[0]: file " in answer["detail"]
    assert "empty or only whitespace" in answer["detail"]
    assert posted == 503 and "Retry-After" in headers  # retried by Flux, unlike a 401
    assert "fluxback_ready 0.0" in text


async def test_unready_while_appends_fail_although_a_probe_write_fits(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk can still take the probe's one-row update: a failed append counts until
    an append commits again."""
    real_append = service.journal.append

    async def full_disk(delivery: NewDelivery) -> AppendResult:
        raise JournalUnavailable("journal cannot commit: database or disk is full")

    monkeypatch.setattr(service.journal, "append", full_disk)
    status, _, _ = await service.post_event(event_body(name="a"))
    assert status == 503
    status, answer = await service.get("/readyz")
    assert status == 503
    assert "journal: the last append failed" in answer["detail"]
    monkeypatch.setattr(service.journal, "append", real_append)
    assert (await service.post_event(event_body(name="b")))[0] == 202
    assert await service.get("/readyz") == (200, {"status": "ready"})


async def test_not_ready_when_the_journal_cannot_commit(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db")
    await journal.open()
    await journal.close()
    async with running(make_config(tmp_path), journal) as svc:
        status, answer = await svc.get("/readyz")
    assert status == 503
    assert answer["detail"].startswith("journal: ")


async def test_metrics(service: Service) -> None:
    await service.post_event(payload("a_kustomization_reconciliation_succeeded"))
    await service.post_event(payload("b_kustomization_progressing"))
    async with service.session.get(f"{service.url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    for name in METRIC_NAMES:
        assert f"# HELP {name} " in text
    assert 'fluxback_journal_depth{state="received"} 2.0' in text
    assert 'fluxback_journal_depth{state="dead"} 0.0' in text
    assert 'fluxback_http_request_duration_seconds_count{route="/flux/events",status_class="2xx"} 2.0' in text


async def _post_examples(service: Service) -> list[int]:
    ids = []
    for name in (
        "a_kustomization_reconciliation_succeeded",
        "d_helmrelease_upgrade_succeeded",
        "f_gitrepository_new_artifact",
    ):
        _, answer, _ = await service.post_event(payload(name))
        ids.append(answer["id"])
    return ids


async def test_list_deliveries_with_filters(service: Service) -> None:
    ids = await _post_examples(service)
    status, answer = await service.get("/deliveries")
    assert status == 200
    assert [d["id"] for d in answer["deliveries"]] == ids[::-1]
    assert answer["next_before"] is None

    _, by_commit = await service.get("/deliveries", params={"revision": SHA[:10]})
    assert {d["id"] for d in by_commit["deliveries"]} == {ids[0], ids[1], ids[2]}
    _, by_object = await service.get("/deliveries", params={"object": "HelmRelease/data-pipelines/etl"})
    assert [d["id"] for d in by_object["deliveries"]] == [ids[1]]
    _, dead = await service.get("/deliveries", params={"state": "dead"})
    assert dead["deliveries"] == []
    _, unknown_dag = await service.get("/deliveries", params={"dag_id": "no_such_dag"})
    assert unknown_dag["deliveries"] == []


async def test_paging(service: Service) -> None:
    ids = await _post_examples(service)
    _, page = await service.get("/deliveries", params={"limit": "2"})
    assert [d["id"] for d in page["deliveries"]] == [ids[2], ids[1]]
    assert page["next_before"] == ids[1]
    _, rest = await service.get("/deliveries", params={"limit": "2", "before": str(ids[1])})
    assert [d["id"] for d in rest["deliveries"]] == [ids[0]]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"state": "finished"}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"before": "-1"}, "before"),
        ({"object": "Kustomization/apps"}, "object"),
    ],
)
async def test_bad_queries_name_the_parameter(service: Service, params: dict[str, str], name: str) -> None:
    status, answer = await service.get("/deliveries", params=params)
    assert status == 400
    assert answer["detail"].startswith(f"{name}: ")


async def test_get_delivery(service: Service) -> None:
    body = payload("a_kustomization_reconciliation_succeeded")
    _, posted, _ = await service.post_event(body)
    status, delivery = await service.get(f"/deliveries/{posted['id']}")
    assert status == 200
    assert delivery["id"] == posted["id"]
    assert delivery["state"] == DeliveryState.RECEIVED
    assert delivery["object"]["key"] == "Kustomization/flux-system/data-pipelines"
    assert delivery["event"] == json.loads(body)
    assert delivery["commit"] == SHA
    assert delivery["outcome"] == "success"
    assert delivery["authenticated_by"] == "hmac"
    assert delivery["correlations"] == []
    assert delivery["actions"] == []
    assert isinstance(delivery["decisions"], list)


@pytest.mark.parametrize(
    "path",
    [
        "/deliveries/999",
        f"/deliveries/{2**64}",
        "/deliveries/abc",
        "/deliveries/" + "9" * 4301,  # past Python's int digit limit
        "/deliveries/\u0661",  # Arabic-Indic one: not delivery 1
        "/deliveries/\uff11",  # fullwidth one
    ],
)
async def test_unknown_delivery_is_a_json_404(service: Service, path: str) -> None:
    await service.post_event(event_body())  # delivery 1 exists
    status, answer = await service.get(path)
    assert status == 404
    assert set(answer) == {"error", "detail"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with service.session.post(f"{service.url}{path}/replay", headers=admin) as response:
        assert response.status == 404


@pytest.mark.parametrize("value", ["\u0661", "9" * 4301, "1" * 20])
async def test_query_numbers_are_ascii_and_bounded(service: Service, value: str) -> None:
    for name in ("limit", "before"):
        status, answer = await service.get("/deliveries", params={name: value})
        assert status == 400
        assert answer["detail"].startswith(f"{name}: ")


@pytest.mark.parametrize("pattern", ["%", "_", "3b9f%", "____"])
async def test_revision_wildcards_are_taken_literally(service: Service, pattern: str) -> None:
    await service.post_event(event_body())
    status, answer = await service.get("/deliveries", params={"revision": pattern})
    assert status == 200
    assert answer["deliveries"] == []
    status, answer = await service.get("/deliveries", params={"revision": "3b9f"})
    assert len(answer["deliveries"]) == 1


async def _replay(service: Service, delivery_id: int, token: str | None) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with service.session.post(f"{service.url}/deliveries/{delivery_id}/replay", headers=headers) as r:
        return r.status, await r.json(), r.headers.get("WWW-Authenticate", "")


async def test_replay_needs_an_admin_token(service: Service) -> None:
    _, posted, _ = await service.post_event(event_body())
    status, answer, challenge = await _replay(service, posted["id"], None)
    assert (status, challenge) == (401, "Bearer")
    status, answer, _ = await _replay(service, posted["id"], "not-an-admin-token")
    assert status == 403
    assert "not-an-admin-token" not in json.dumps(answer)
    status, answer, _ = await _replay(service, posted["id"], ADMIN_TOKEN)
    assert (status, answer["error"]) == (409, "not finished")  # still waiting for the worker
    await service.journal.set_state(posted["id"], DeliveryState.DEAD, error="Airflow unreachable")
    status, answer, _ = await _replay(service, posted["id"], ADMIN_TOKEN)
    assert (status, answer) == (202, {"replayed": [posted["id"]]})
    status, _, _ = await _replay(service, 999, ADMIN_TOKEN)
    assert status == 404


async def test_replay_is_off_without_admin_tokens(tmp_path: Path, journal: SqliteJournal) -> None:
    async with running(make_config(tmp_path, admin_tokens=[]), journal) as svc:
        status, answer, _ = await _replay(svc, 1, "anything")
    assert status == 403
    assert "admin_tokens" in answer["detail"]
