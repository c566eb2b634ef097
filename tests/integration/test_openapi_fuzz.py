"""schemathesis against the running service: generated requests for every operation in
docs/openapi.yaml (valid and invalid ones), and every answer must be documented, match its
schema and never be a 5xx. Bounded (a fixed seed and example count) to keep CI short."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.flux_replay import event_body
from tests.integration.fluxback_service import ADMIN_TOKEN, REPO_ROOT, FluxbackService

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@pytest.fixture
def fluxback(tmp_path: Path) -> Iterator[FluxbackService]:
    """The service as it runs, open to unsigned events so the fuzzer reaches validation and the journal."""
    (tmp_path / "admin").write_text(ADMIN_TOKEN)
    service = FluxbackService(
        tmp_path,
        {
            "journal": f"sqlite:///{tmp_path / 'journal.db'}",
            "webhook": {"allow_unauthenticated": True},
            "admin_tokens": [str(tmp_path / "admin")],
            "git": {"cache_dir": str(tmp_path / "git-cache")},
            "worker": {"poll_interval_seconds": 0.2},
            "log": {"format": "json", "level": "warning"},
        },
    )
    service.start()
    yield service
    service.stop()


def test_generated_requests_get_documented_answers_and_no_5xx(fluxback: FluxbackService) -> None:
    for name in ("apps", "infra"):  # deliveries for the read endpoints to return
        answer = requests.post(
            f"{fluxback.url}/flux/events",
            data=event_body(name=name),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 202, answer.text
    started = time.monotonic()
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            str(REPO_ROOT / "docs" / "openapi.yaml"),
            "--url",
            fluxback.url,
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "20261201",
            "--generation-database",
            "none",
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--request-timeout",
            "10",
            "--workers",
            "1",
            "--no-color",
        ],
        cwd=fluxback.root,  # its crash cache stays out of the checkout
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.monotonic() - started
    report = f"{run.stdout}\n{run.stderr}\n(schemathesis took {elapsed:.0f} s)\n{fluxback.log_tail()}"
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout or "passed" in run.stdout, report
