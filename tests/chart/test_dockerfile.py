"""The Dockerfile passes hadolint and keeps the promises the chart relies on."""

from __future__ import annotations

import json
import re

from tests.chart.tools import REPO, run, tool

DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_finds_nothing() -> None:
    result = run(tool("hadolint"), "--format", "json", str(DOCKERFILE))
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=1)


def test_runs_as_a_numeric_non_root_user_with_the_config_path_from_the_environment() -> None:
    text = DOCKERFILE.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", final_stage, re.MULTILINE)
    assert user is not None and int(user.group(1)) != 0, "the final stage must set a numeric non-root USER"
    assert 'ENTRYPOINT ["fluxback", "serve"]' in final_stage
    assert "FLUXBACK_CONFIG=" in final_stage
    assert re.search(r"^ARG BASE=", text, re.MULTILINE) and text.count("FROM ${BASE}") == 2
    for label in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in final_stage
