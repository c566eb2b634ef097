"""From the commits an event made live to the Airflow runs that authored them.

Each commit gets a verdict an operator can read in `/deliveries`: which run it
names, or why it is left alone (no trailers, malformed trailers, a DAG the
policy does not allow for this Flux object).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


NO_TRAILERS = "commit has no Airflow trailers"


@dataclass(frozen=True, kw_only=True)
class Correlated:
    records: tuple[Correlation, ...]
    """One per commit, for the journal."""
    runs: tuple[AuthoringRun, ...]
    """The commits Fluxback acts on."""
    refused: tuple[Correlation, ...]
    """The records of commits whose Airflow trailers are not acted on: malformed, without an
    accepted signature, or naming a DAG the policy does not allow for the object."""


def correlate(
    commits: Sequence[CommitInfo],
    facts: EventFacts,
    policy: Policy,
    default_instance: str,
    unsigned: Mapping[str, str] | None = None,
) -> Correlated:
    """Verdicts for `commits`; `unsigned` maps the sha of a commit whose signature is not
    accepted (when the repository requires signatures) to git's reason."""
    records: list[Correlation] = []
    runs: list[AuthoringRun] = []
    refused: list[Correlation] = []
    for commit in commits:
        record, run = _correlate_one(
            commit, facts, policy, default_instance, (unsigned or {}).get(commit.sha)
        )
        records.append(record)
        if run is not None:
            runs.append(run)
        elif record.verdict != NO_TRAILERS:
            refused.append(record)
    return Correlated(records=tuple(records), runs=tuple(runs), refused=tuple(refused))


def _correlate_one(
    commit: CommitInfo,
    facts: EventFacts,
    policy: Policy,
    default_instance: str,
    signature_problem: str | None,
) -> tuple[Correlation, AuthoringRun | None]:
    """The commit's record, and the run to act on when its trailers name one the policy allows."""
    subject = commit.message.split("\n", 1)[0][:200]
    try:
        claim = claim_from_trailers(commit.trailers)
    except ClaimInvalid as problem:
        claim, verdict = None, f"malformed Airflow trailers: {problem}"
    else:
        verdict = NO_TRAILERS
    if claim is None:
        record = Correlation(
            commit=commit.sha, committed_at=commit.committed_at, subject=subject, verdict=verdict
        )
        return record, None
    instance = claim.instance or default_instance
    allowed = signature_problem is None and policy.allows(facts, claim.dag_id, instance)
    record = Correlation(
        commit=commit.sha,
        committed_at=commit.committed_at,
        subject=subject,
        dag_id=claim.dag_id,
        run_id=claim.run_id,
        task_ids=claim.task_ids,
        map_index=claim.map_index,
        instance=instance,
        verdict=_claim_verdict(claim, instance, facts, allowed, signature_problem),
    )
    return record, AuthoringRun(commit=commit, claim=claim, instance=instance) if allowed else None


def _claim_verdict(
    claim: AirflowClaim, instance: str, facts: EventFacts, allowed: bool, signature_problem: str | None
) -> str:
    if signature_problem is not None:
        return f"signature not accepted, trailers ignored: {signature_problem}"
    if allowed:
        return f"authored by {claim.dag_id} run {claim.run_id}"
    return (
        f"DAG {claim.dag_id!r} (instance {instance!r}) not allowed for"
        f" {facts.kind}/{facts.namespace}/{facts.name} by the policy"
    )
