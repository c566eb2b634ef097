"""Each commit gets a verdict: the run it names, or why Fluxback leaves it alone."""

from __future__ import annotations

from datetime import UTC, datetime

from receiver.config import Match, PolicyEntry
from receiver.correlate import correlate
from receiver.git import CommitInfo
from receiver.rules import EventFacts, Policy
from receiver.trailers import commit_trailers

FACTS = EventFacts(kind="Kustomization", namespace="flux-system", name="apps", outcome="success", metadata={})
POLICY = Policy((PolicyEntry(match=Match(name="apps"), dags=("deploy_*",)),))


def commit(sha: str, message: str) -> CommitInfo:
    return CommitInfo(
        sha=sha * 40,
        message=message,
        committed_at=datetime(2026, 11, 25, tzinfo=UTC),
        author="airflow <airflow@example.com>",
        trailers=tuple(commit_trailers(message)),
    )


def test_verdicts_for_each_kind_of_commit() -> None:
    commits = [
        commit("a", "plain change\n"),
        commit("b", "bad\n\nAirflow-Dag-Id: deploy_model\n"),
        commit("c", "other\n\nAirflow-Dag-Id: drop_tables\nAirflow-Run-Id: r0\n"),
        commit(
            "d",
            "deploy\n\nAirflow-Dag-Id: deploy_model\nAirflow-Run-Id: r1\nAirflow-Task-Id: wait\n"
            "Airflow-Instance: prod\n",
        ),
    ]
    result = correlate(commits, FACTS, POLICY, "default")
    verdicts = [r.verdict for r in result.records]
    assert verdicts[0] == "commit has no Airflow trailers"
    assert verdicts[1].startswith("malformed Airflow trailers:") and "Run-Id" in verdicts[1]
    assert verdicts[2] == (
        "DAG 'drop_tables' (instance 'default') not allowed for Kustomization/flux-system/apps by the policy"
    )
    assert verdicts[3] == "authored by deploy_model run r1"
    assert [r.subject for r in result.records] == ["plain change", "bad", "other", "deploy"]
    [run] = result.runs
    assert (run.commit.sha, run.claim.task_ids, run.instance) == ("d" * 40, ("wait",), "prod")
