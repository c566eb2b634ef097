"""The `fluxback` command: check-config, deliveries, replay, and serve's refusal to start."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from receiver.cli import main
from receiver.events import parse_event
from receiver.intake import new_delivery
from receiver.journal import DeliveryState, NewDelivery
from receiver.journal.sqlite import SqliteJournal
from tests.flux_replay import payload

pytestmark = pytest.mark.usefixtures("reset_logging")  # the commands configure logging for the process


def _write_config(tmp_path: Path, **extra: object) -> Path:
    key = tmp_path / "hmac-key"
    key.write_bytes(b"cli-test-key\n")
    tree: dict[str, object] = {
        "journal": f"sqlite://{tmp_path}/journal.db",
        "webhook": {"hmac_keys": [str(key)]},
        **extra,
    }
    path = tmp_path / "fluxback.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


def _delivery(name: str) -> NewDelivery:
    body = payload(name)
    return new_delivery(
        parse_event(body),
        body=body,
        identity=hashlib.sha256(body).hexdigest(),
        received_at=datetime(2026, 8, 10, 9, 15, 43, tzinfo=UTC),
        authenticated_by="hmac",
        source="webhook",
    )


def _journal_with(tmp_path: Path, *names: str) -> list[int]:
    async def fill() -> list[int]:
        journal = SqliteJournal(tmp_path / "journal.db")
        await journal.open()
        try:
            return [(await journal.append(_delivery(name))).id for name in names]
        finally:
            await journal.close()

    return asyncio.run(fill())


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_config(tmp_path)
    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().out == f"configuration OK: {path}\n"


def test_check_config_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUXBACK_CONFIG", str(_write_config(tmp_path)))
    assert main(["check-config"]) == 0


def test_check_config_lists_every_error_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_config(tmp_path, listen="nowhere", log={"level": "loud"}, colour="blue")
    assert main(["check-config", "--config", str(path)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 3
    assert any(line.startswith("error: listen: ") for line in errors)
    assert any(line.startswith("error: log.level: ") for line in errors)
    assert any(line.startswith("error: colour: unknown key") for line in errors)


def test_check_config_runs_startup_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_config(tmp_path, admin_tokens=[str(tmp_path / "missing-admin-token")])
    assert main(["check-config", "--config", str(path)]) == 1
    assert capsys.readouterr().err.startswith("error: admin_tokens[0]: cannot read file ")


def test_serve_refuses_to_start_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_config(tmp_path, webhook={"hmac_keys": [str(tmp_path / "no-such-key")]})
    assert main(["serve", "--config", str(path)]) == 1
    assert "webhook.hmac_keys[0]: cannot read file" in capsys.readouterr().err


def test_deliveries_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_config(tmp_path)
    ids = _journal_with(
        tmp_path, "a_kustomization_reconciliation_succeeded", "d_helmrelease_upgrade_succeeded"
    )
    assert main(["deliveries", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID", "STATE", "RECEIVED", "(UTC)", "OBJECT", "REASON", "OUTCOME", "REVISION", "TRIES", "WHY"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == [str(i) for i in reversed(ids)]
    assert "main@sha1:3b9f1c2a7d4e " in lines[2] + " "
    assert "Kustomization/flux-system/data-pipelines" in lines[2]


def test_deliveries_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_config(tmp_path)
    _journal_with(tmp_path, "a_kustomization_reconciliation_succeeded", "d_helmrelease_upgrade_succeeded")
    assert main(["deliveries", "--config", str(path), "--object", "HelmRelease/data-pipelines/etl"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["deliveries", "--config", str(path), "--state", "dead"]) == 0
    assert capsys.readouterr().out == "no deliveries match\n"
    assert main(["deliveries", "--config", str(path), "--revision", "3b9f1c2a"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_deliveries_needs_an_existing_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deliveries", "--config", str(_write_config(tmp_path))]) == 1
    assert capsys.readouterr().err.startswith(f"error: journal: no journal at {tmp_path / 'journal.db'}")
    assert not (tmp_path / "journal.db").exists()


def test_deliveries_refuses_an_unknown_state(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["deliveries", "--config", str(_write_config(tmp_path)), "--state", "lost"])
    assert caught.value.code == 2


def test_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_config(tmp_path)
    (delivery_id,) = _journal_with(tmp_path, "c_kustomization_health_check_failed")

    async def mark_dead() -> None:
        journal = SqliteJournal(tmp_path / "journal.db")
        await journal.open()
        await journal.set_state(delivery_id, DeliveryState.DEAD, error="Airflow unreachable")
        await journal.close()

    asyncio.run(mark_dead())
    assert main(["replay", "--config", str(path), str(delivery_id)]) == 0
    assert capsys.readouterr().out == f"delivery {delivery_id}: will be processed again\n"
    assert main(["deliveries", "--config", str(path), "--state", "received"]) == 0
    assert str(delivery_id) in capsys.readouterr().out
    assert main(["replay", "--config", str(path), str(delivery_id), "4242"]) == 1
    assert capsys.readouterr().err == (
        f"error: delivery {delivery_id}: is received; only done or dead ones replay\n"
        "error: delivery 4242: no such delivery\n"
    )


def test_check_config_reports_value_errors_and_file_problems_in_one_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_config(
        tmp_path,
        listen="nowhere",
        journal="mysql://db/fluxback",
        webhook={"hmac_keys": [str(tmp_path / "no-such-key")]},
    )
    assert main(["check-config", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: listen: must be host:port, got 'nowhere'",
        "error: journal: must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB, got a 'mysql' URL",
        f"error: webhook.hmac_keys[0]: cannot read file {tmp_path / 'no-such-key'}",
    ]


def test_check_config_skips_file_checks_for_values_already_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_config(
        tmp_path,
        webhook={"hmac_keys": "inline-secret"},
        admin_tokens=[str(tmp_path / "missing-admin-token")],
        airflow={"instances": {"default": {"url": "ftp://af", "token_file": str(tmp_path / "no-token")}}},
    )
    assert main(["check-config", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: webhook.hmac_keys: must be a list of file paths (secrets are never inline)",
        "error: airflow.instances.default.url: must start with http:// or https://",
        f"error: admin_tokens[0]: cannot read file {tmp_path / 'missing-admin-token'}",
    ]


def test_config_schema_prints_the_committed_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-schema"]) == 0
    printed = capsys.readouterr().out
    committed = Path(__file__).parents[2] / "docs" / "config.schema.json"
    assert printed == committed.read_text(encoding="utf-8")
    assert json.loads(printed)["properties"]["listen"]["default"] == "127.0.0.1:9292"


@pytest.mark.parametrize("content", [b"", b"  \n"])
def test_check_config_refuses_a_blank_or_directory_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    """A blank HMAC key would make every signed event a 401, which Flux does not retry."""
    blank = tmp_path / "blank-key"
    blank.write_bytes(content)
    (tmp_path / "key-dir").mkdir()
    path = _write_config(tmp_path, webhook={"hmac_keys": [str(blank), str(tmp_path / "key-dir")]})
    assert main(["check-config", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: webhook.hmac_keys[0]: file {blank} is empty or only whitespace",
        f"error: webhook.hmac_keys[1]: cannot read file {tmp_path / 'key-dir'}",
    ]
