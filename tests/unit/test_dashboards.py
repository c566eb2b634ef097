"""The committed dashboards are exactly what dashboards/generate.py builds, and every panel asks the
data source the operator picks. (Their PromQL is checked against a running service in
tests/integration/test_dashboards.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from dashboards import generate

RENDERED = generate.rendered()


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_committed_json_is_what_the_code_generates(name: str) -> None:
    committed = (generate.HERE / name).read_text()
    assert committed == RENDERED[name], (
        f"dashboards/{name} is stale: run `.venv/bin/python -m dashboards.generate`"
    )


def test_no_dashboard_json_without_code() -> None:
    assert sorted(p.name for p in generate.HERE.glob("*.json")) == sorted(generate.DASHBOARDS)


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_every_query_uses_the_datasource_variable(name: str) -> None:
    board: dict[str, Any] = json.loads(RENDERED[name])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    chosen = {"type": "prometheus", "uid": "${datasource}"}
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == chosen, panel["title"]
        assert panel["targets"] and all(t["datasource"] == chosen for t in panel["targets"]), panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == chosen, variable["name"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_the_json_round_trips_through_the_grafana_11_models(name: str) -> None:
    """Nothing in the file is unknown to the schema the SDK was generated from."""
    data = json.loads(RENDERED[name])
    assert json.loads(json.dumps(Dashboard.from_json(data), cls=JSONEncoder)) == data
