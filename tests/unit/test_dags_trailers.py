"""The DAG side renders trailers that the service, and git itself, read back as the same claim."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from receiver.dags import add_airflow_trailers, airflow_claim, airflow_trailers, read_airflow_trailers
from receiver.trailers import AirflowClaim, ClaimInvalid, claim_from_trailers, parse_trailers

RUN_ID = "manual__2026-11-25T08:00:00+00:00"


def context(
    map_index: int = -1, dag_id: str = "deploy_model", run_id: str = RUN_ID, clear_number: int = 0
) -> dict[str, Any]:
    """What a task's context holds that the trailers use: the running task instance and its run."""
    return {
        "ti": SimpleNamespace(dag_id=dag_id, run_id=run_id, task_id="commit", map_index=map_index),
        "dag_run": SimpleNamespace(dag_id=dag_id, run_id=run_id, clear_number=clear_number),
    }


def test_the_block_names_the_run_and_the_task_to_mark() -> None:
    block = airflow_trailers(context(), mark="wait_for_deploy", instance="prod")

    assert block == (
        "Airflow-Dag-Id: deploy_model\n"
        f"Airflow-Run-Id: {RUN_ID}\n"
        "Airflow-Task-Id: wait_for_deploy\n"
        "Airflow-Instance: prod\n"
    )


@pytest.mark.parametrize(
    ("own_index", "kwargs", "claim"),
    [
        (-1, {"mark": "wait"}, AirflowClaim("deploy_model", RUN_ID, ("wait",))),
        (3, {"mark": "wait"}, AirflowClaim("deploy_model", RUN_ID, ("wait",), map_index=3)),
        (3, {"mark": "wait", "map_index": None}, AirflowClaim("deploy_model", RUN_ID, ("wait",))),
        (-1, {"mark": ["a", "b"], "map_index": 0}, AirflowClaim("deploy_model", RUN_ID, ("a", "b"), 0)),
        (3, {}, AirflowClaim("deploy_model", RUN_ID)),
        (-1, {"instance": "eu"}, AirflowClaim("deploy_model", RUN_ID, instance="eu")),
    ],
)
def test_rendered_trailers_read_back_as_the_same_claim_through_the_services_parser(
    own_index: int, kwargs: dict[str, Any], claim: AirflowClaim
) -> None:
    message = add_airflow_trailers(
        "Deploy model 1.1.0\n\nBumps the image tag.\n", context(own_index), **kwargs
    )

    assert airflow_claim(context(own_index), **kwargs) == claim
    assert read_airflow_trailers(message) == claim
    assert claim_from_trailers(parse_trailers(message)) == claim


def test_trailers_join_an_existing_trailer_block() -> None:
    message = add_airflow_trailers("Deploy\n\nSigned-off-by: Bot <bot@example.com>\n", context(), mark="w")

    assert message == (
        "Deploy\n\nSigned-off-by: Bot <bot@example.com>\n"
        f"Airflow-Dag-Id: deploy_model\nAirflow-Run-Id: {RUN_ID}\nAirflow-Task-Id: w\n"
    )


def test_after_a_clear_the_message_says_how_often_the_run_was_cleared() -> None:
    """So that a try after a clear cannot take a commit from before it for its own (see commit_and_push)."""
    first = add_airflow_trailers("Deploy", context(), mark="wait")
    retried = add_airflow_trailers("Deploy", context(), mark="wait")
    cleared = add_airflow_trailers("Deploy", context(clear_number=2), mark="wait")

    assert first == retried
    assert "Fluxback" not in first
    assert cleared == first + "Fluxback-Clear-Number: 2\n"
    assert read_airflow_trailers(cleared) == read_airflow_trailers(first)
    assert add_airflow_trailers("Deploy", {"ti": context()["ti"]}, mark="wait") == first  # no dag_run


def test_git_reads_the_same_trailers(tmp_path: Path) -> None:
    message = add_airflow_trailers("Deploy model 1.1.0", context(2), mark="wait_for_deploy")

    parsed = subprocess.run(
        ["git", "interpret-trailers", "--parse"],
        input=message,
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout

    assert parsed == airflow_trailers(context(2), mark="wait_for_deploy")


def test_ids_that_cannot_be_trailers_are_refused() -> None:
    with pytest.raises(ClaimInvalid):
        airflow_trailers(context(run_id=" padded"), mark="wait")
    with pytest.raises(ClaimInvalid):
        airflow_trailers(context(), mark="")


def test_a_message_without_airflow_trailers_makes_no_claim() -> None:
    assert read_airflow_trailers("Bump chart\n\nSigned-off-by: A <a@example.com>\n") is None


def test_receiver_dags_stays_off_the_services_dependencies() -> None:
    """DAG files import receiver.dags in Airflow, where aiohttp, structlog and pygit2 are not installed."""
    probe = (
        "import sys, receiver.dags\n"
        "heavy = {'aiohttp', 'structlog', 'pygit2', 'prometheus_client', 'airflow', 'airflow_client'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "allowed = {'receiver', 'receiver.assets', 'receiver.trailers', 'receiver.git_credentials'}\n"
        "service = sorted(m for m in sys.modules if m.startswith('receiver')\n"
        "                 and m not in allowed and not m.startswith('receiver.dags'))\n"
        "print(loaded, service)\n"
    )

    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout

    assert out.strip() == "[] []"


@pytest.mark.skipif(importlib.util.find_spec("airflow") is not None, reason="Airflow is installed here")
def test_airflow_names_say_how_to_install_airflow() -> None:
    import receiver.dags

    with pytest.raises(ImportError, match=r"fluxback\[airflow\]"):
        _ = receiver.dags.WaitForDeploySensor
