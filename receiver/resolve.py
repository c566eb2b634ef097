"""The first steps of the pipeline: from a delivery to the commits it made live and their runs.

Resolving reads the commit the event reports in the repository's mirror, finds the
commits that moving the Flux object from its last applied revision made live, and
correlates them with the Airflow runs their trailers name. Every branch writes a
decision on the delivery, and the `Resolution` says what the next steps are to do:
nothing (`finished`), only rules (no `commit`), or rules and the authoring runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from receiver.correlate import AuthoringRun, correlate
from receiver.errors import PermanentError
from receiver.events import commit_from_revision
from receiver.explain import Cause
from receiver.git import CommitInfo, Mirror, Mirrors
from receiver.journal import Correlation, Delivery, Journal
from receiver.rules import EventFacts, Policy
from receiver.trailers import AIRFLOW_PREFIX

ACTIONABLE_OUTCOMES = frozenset({"success", "failure"})


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """What resolving found. The decision saying why is already on the delivery."""

    finished: str | None = None
    """Why the delivery needs nothing more (a progress event, a revision already handled);
    None: plan and perform its actions."""
    commit: str | None = None
    """The full sha of the commit Flux applied; None when it could not be read (only rules apply)."""
    commits: tuple[CommitInfo, ...] = ()
    """The commits the event made live under the object's path, oldest first."""
    runs: tuple[AuthoringRun, ...] = ()
    """The authoring runs the policy allows Fluxback to act on."""
    refused: tuple[Correlation, ...] = ()
    """Commits whose Airflow trailers are not acted on, with the verdict saying why."""


class Resolver:
    """Resolve and correlate one delivery, against the mirrors and the object's state in the journal."""

    def __init__(self, *, journal: Journal, mirrors: Mirrors, policy: Policy, default_instance: str) -> None:
        self._journal = journal
        self._mirrors = mirrors
        self._policy = policy
        self._default_instance = default_instance

    async def resolve(self, delivery: Delivery, facts: EventFacts) -> Resolution:
        """Raises TemporaryError when a mirror cannot be fetched, or the cluster not read, now."""
        if delivery.outcome not in ACTIONABLE_OUTCOMES:
            return await self._finish(
                delivery,
                f"{delivery.reason} is a {delivery.outcome} event: nothing to act on",
                Cause.NOT_ACTIONABLE,
            )
        if delivery.commit is None:
            return await self._rules_only(
                delivery, f"no commit in revision {delivery.revision!r}: only rules apply", Cause.NO_COMMIT
            )
        located = self._mirrors.for_object(delivery.kind, delivery.namespace, delivery.name)
        if isinstance(located, str):
            return await self._rules_only(delivery, f"{located}: only rules apply", Cause.NO_REPOSITORY)
        mirror, path = located
        try:
            sha = await self._applied_commit(delivery, delivery.commit, mirror)
        except PermanentError as problem:  # unknown after a fetch, ambiguous short sha: retrying cannot help
            return await self._rules_only(
                delivery, f"{problem}: commits cannot be correlated; only rules apply", Cause.GIT_PROBLEM
            )
        state = await self._journal.object_state(delivery.object_key)
        if delivery.outcome == "success" and state.last_applied == sha:
            return await self._finish(
                delivery,
                f"revision {sha[:12]} was already applied: nothing new",
                Cause.NOTHING_NEW,
                commit=sha,
            )
        if delivery.outcome == "failure" and state.last_failed == sha:
            return await self._finish(
                delivery, f"failure of revision {sha[:12]} was already handled", Cause.NOTHING_NEW, commit=sha
            )
        applied = await mirror.commits_applied(state.last_applied, sha, path)
        basis = _basis_text(applied.basis, state.last_applied, sha, len(applied.commits), path)
        if applied.truncated:
            basis += f"; the range was longer: only the newest {len(applied.commits)} commits were read"
        unsigned = await _unsigned(mirror, applied.commits)
        correlated = correlate(applied.commits, facts, self._policy, self._default_instance, unsigned)
        # Submitted together, the two records share one journal commit where the backend batches.
        await asyncio.gather(
            self._journal.add_decision(delivery.id, basis),
            self._journal.set_correlations(delivery.id, correlated.records),
        )
        return Resolution(
            commit=sha, commits=applied.commits, runs=correlated.runs, refused=correlated.refused
        )

    async def _finish(self, delivery: Delivery, why: str, cause: Cause, **fields: Any) -> Resolution:
        # Written with the outcome that follows: one commit, one round trip.
        self._journal.note_decision(delivery.id, why, cause=cause, **fields)
        return Resolution(finished=why)

    async def _rules_only(self, delivery: Delivery, why: str, cause: Cause) -> Resolution:
        # Written with the next write (an action record or the outcome).
        self._journal.note_decision(delivery.id, why, cause=cause)
        return Resolution()

    async def _applied_commit(self, delivery: Delivery, commit: str, mirror: Mirror) -> str:
        """The full sha of the commit the event reports, trusting metadata only within the revision.

        `commit` metadata comes from an object annotation, not from Flux's controllers; when the
        revision itself names a commit, the metadata commit must be that commit or an ancestor
        of it, or the revision is used: only what Flux applied may speak for Airflow runs.
        """
        sha = await mirror.resolve(commit)
        applied = commit_from_revision(delivery.revision)
        if applied is None or applied == sha:
            return sha
        applied = await mirror.resolve(applied)
        if not await mirror.contains(applied, sha):
            await self._journal.add_decision(
                delivery.id,
                f"metadata commit {sha[:12]} is not part of the applied revision {delivery.revision};"
                f" using the revision's commit {applied[:12]}",
            )
            return applied
        return sha


async def _unsigned(mirror: Mirror, commits: tuple[CommitInfo, ...]) -> dict[str, str]:
    """Commits with Airflow trailers whose signature the repository does not accept."""
    if mirror.repository.allowed_signers_file is None:
        return {}
    problems: dict[str, str] = {}
    for commit in commits:
        if any(t.key.lower().startswith(AIRFLOW_PREFIX.lower()) for t in commit.trailers):
            problem = await mirror.signature_problem(commit.sha)
            if problem is not None:
                problems[commit.sha] = problem
    return problems


def _basis_text(basis: str, previous: str | None, sha: str, count: int, path: str) -> str:
    where = f" under {path}" if path not in ("", ".", "./") else ""
    if basis == "first":
        return f"first event for this object: revision {sha[:12]} alone ({count} commit{where})"
    if basis == "not-descendant":
        return (
            f"revision {sha[:12]} does not descend from the last applied {str(previous)[:12]}"
            f" (force push or rollback): revision alone ({count} commit{where})"
        )
    if basis == "same":
        return f"revision {sha[:12]} is the last applied one: no new commits"
    return f"{count} commit(s){where} in {str(previous)[:12]}..{sha[:12]}"
