"""Log configuration: JSON lines, level filtering, stdlib loggers, and redaction of secret-looking fields."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import structlog

from receiver.config import LogConfig
from receiver.log import REDACTED, configure_logging

pytestmark = pytest.mark.usefixtures("reset_logging")


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="auto", level="info"), out)
    with structlog.contextvars.bound_contextvars(delivery_id=7):
        structlog.get_logger("t").info("decided", object="Kustomization/flux-system/apps")
    (line,) = _lines(out)
    assert line["event"] == "decided"
    assert line["delivery_id"] == 7
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_console_format() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="console", level="info"), out)
    structlog.get_logger("t").info("decided", outcome="success")
    text = out.getvalue()
    assert "decided" in text
    assert "outcome=success" in text
    assert not text.startswith("{")


def test_level_filtering() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="warning"), out)
    log = structlog.get_logger("t")
    log.info("quiet")
    log.warning("loud")
    assert [line["event"] for line in _lines(out)] == ["loud"]


def test_standard_library_loggers_share_the_format() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), out)
    logging.getLogger("aiohttp.server").warning("something %s", "happened")
    (line,) = _lines(out)
    assert line["event"] == "something happened"
    assert line["logger"] == "aiohttp.server"


@pytest.mark.parametrize(
    "name",
    ["token", "bearer_token", "password", "X-Signature", "authorization", "api_key", "hmac_keys", "secret"],
)
def test_secret_looking_fields_are_redacted(name: str) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), out)
    structlog.get_logger("t").info("oops", **{name: "hunter2", "nested": {name: "hunter2", "fine": 1}})
    (line,) = _lines(out)
    assert line[name] == REDACTED
    assert line["nested"] == {name: REDACTED, "fine": 1}
    assert "hunter2" not in out.getvalue()


@pytest.mark.parametrize("name", ["object_key", "dedupe_key", "monkey", "keyboard_layout", "revision"])
def test_ordinary_fields_are_kept(name: str) -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), out)
    structlog.get_logger("t").info("fine", **{name: "value"})
    assert _lines(out)[0][name] == "value"


def test_tracebacks_never_show_local_variables() -> None:
    out = io.StringIO()
    configure_logging(LogConfig(format="json", level="info"), out)
    token = "local-secret-value"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("t").exception("failed")
    assert token not in out.getvalue()
    assert "RuntimeError: boom" in _lines(out)[0]["exception"]
