"""From the commits an event made live to the Airflow runs that authored them.

Each commit gets a verdict an operator can read in `/deliveries`: which run it
names, or why it is left alone (no trailers, malformed trailers, a DAG the
policy does not allow for this Flux object).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from receiver.git import CommitInfo
from receiver.journal import Correlation
from receiver.rules import EventFacts, Policy
from receiver.trailers import AirflowClaim, ClaimInvalid, claim_from_trailers


@dataclass(frozen=True, kw_only=True)
class AuthoringRun:
    """A run that authored a commit made live by the event, allowed by the policy."""

    commit: CommitInfo
    claim: AirflowClaim
    instance: str


@dataclass(frozen=True, kw_only=True)
class Correlated:
    records: tuple[Correlation, ...]
    """One per commit, for the journal."""
    runs: tuple[AuthoringRun, ...]
    """The commits Fluxback acts on."""


def correlate(
    commits: Sequence[CommitInfo], facts: EventFacts, policy: Policy, default_instance: str
) -> Correlated:
    records: list[Correlation] = []
    runs: list[AuthoringRun] = []
    for commit in commits:
        subject = commit.message.split("\n", 1)[0][:200]
        try:
            claim = claim_from_trailers(commit.trailers)
        except ClaimInvalid as problem:
            claim, verdict = None, f"malformed Airflow trailers: {problem}"
        else:
            verdict = "commit has no Airflow trailers"
        if claim is None:
            records.append(
                Correlation(
                    commit=commit.sha, committed_at=commit.committed_at, subject=subject, verdict=verdict
                )
            )
            continue
        instance = claim.instance or default_instance
        allowed = policy.allows(facts, claim.dag_id, instance)
        if allowed:
            runs.append(AuthoringRun(commit=commit, claim=claim, instance=instance))
        records.append(
            Correlation(
                commit=commit.sha,
                committed_at=commit.committed_at,
                subject=subject,
                dag_id=claim.dag_id,
                run_id=claim.run_id,
                task_ids=claim.task_ids,
                map_index=claim.map_index,
                instance=instance,
                verdict=(
                    f"authored by {claim.dag_id} run {claim.run_id}"
                    if allowed
                    else f"DAG {claim.dag_id!r} (instance {instance!r}) not allowed for"
                    f" {facts.kind}/{facts.namespace}/{facts.name} by the policy"
                ),
            )
        )
    return Correlated(records=tuple(records), runs=tuple(runs))
