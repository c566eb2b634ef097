"""What happened to a delivery, and why, in an operator's words.

The worker leaves decisions, correlations and action records on every
delivery; this module reads them back for people. `why` picks the one fact
that explains the outcome (refused by policy, nothing new, Airflow 404, dead
after N attempts...) for a list row; `story` lays out everything for one
delivery (event, commits and their trailers, decisions, actions with links to
the Airflow UI). The CLI, the HTTP API and the status page all render these,
so an explanation is computed in exactly one place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from receiver.journal import (
    ActionRecord,
    ActionState,
    Correlation,
    Decision,
    Delivery,
    DeliveryFilter,
    DeliveryState,
    DeliverySummary,
    Journal,
)


class Cause(StrEnum):
    """Why a delivery ended as it did: one stable word for scripts and filters.

    The worker stores one as the `cause` field of a decision that ends a delivery early.
    """

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    DEAD = "dead"
    DUPLICATE = "duplicate"
    NOT_ACTIONABLE = "not_actionable"
    """A progress or ignored event: nothing to act on."""
    NO_COMMIT = "no_commit"
    """The revision names no Git commit (OCI digest, bucket): only rules apply."""
    NO_REPOSITORY = "no_repository"
    GIT_PROBLEM = "git_problem"
    NOTHING_NEW = "nothing_new"
    """The revision was already applied (or its failure already handled)."""
    NO_TRAILERS = "no_trailers"
    REFUSED = "refused"
    """A commit named a run, but the policy or the signature check refused it."""
    ACTION_FAILED = "action_failed"
    ALREADY = "already"
    ACTED = "acted"
    NOTHING_TO_DO = "nothing_to_do"


_ACTION_RANK = {ActionState.PERMANENT_ERROR: 0, ActionState.TEMPORARY_ERROR: 1, ActionState.STARTED: 2}
_ACTION_CAUSE = {
    ActionState.PERMANENT_ERROR: Cause.ACTION_FAILED,
    ActionState.TEMPORARY_ERROR: Cause.ACTION_FAILED,
    ActionState.ALREADY: Cause.ALREADY,
}


@dataclass(frozen=True)
class Why:
    cause: Cause
    text: str

    def json(self) -> dict[str, str]:
        return {"cause": self.cause.value, "text": self.text}


@dataclass(frozen=True)
class Link:
    text: str
    url: str


class AirflowLinks:
    """URLs of the Airflow 3 UI pages for runs and task instances, per configured instance.

    Airflow 3.3's UI (served by the api-server at its root) routes
    `dags/:dagId/runs/:runId`, `.../tasks/:taskId` and `.../tasks/:taskId/mapped/:mapIndex`.
    """

    def __init__(self, bases: Mapping[str, str]) -> None:
        self._bases = {name: url.rstrip("/") for name, url in bases.items()}

    def run(self, instance: str | None, dag_id: str, run_id: str) -> Link | None:
        base = self._bases.get(instance or "")
        if base is None:
            return None
        return Link(f"{dag_id} run {run_id}", f"{base}/dags/{_segment(dag_id)}/runs/{_segment(run_id)}")

    def task(
        self, instance: str | None, dag_id: str, run_id: str, task_id: str, map_index: int | None
    ) -> Link | None:
        run = self.run(instance, dag_id, run_id)
        if run is None:
            return None
        url = f"{run.url}/tasks/{_segment(task_id)}"
        if map_index is None:
            return Link(f"task {task_id}", url)
        return Link(f"task {task_id}[{map_index}]", f"{url}/mapped/{map_index}")


def _segment(value: str) -> str:
    """One URL path segment: run ids carry `:` and `+`, and nothing may add or remove a path level."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in (".", "..") else encoded


def why(delivery: Delivery) -> Why:
    """The one fact that explains where the delivery stands."""
    state = delivery.state
    if delivery.duplicate_of is not None:
        return Why(Cause.DUPLICATE, f"duplicate of {delivery.duplicate_of} (same object, revision, outcome)")
    if state is DeliveryState.DEAD:
        return Why(Cause.DEAD, f"dead after {delivery.attempts} attempt(s): {delivery.last_error}")
    if state is DeliveryState.FAILED:
        when = _clock(delivery.next_attempt_at)
        return Why(
            Cause.RETRYING,
            f"retrying after attempt {delivery.attempts} (next at {when}): {delivery.last_error}",
        )
    if state is DeliveryState.RECEIVED:
        return Why(Cause.PENDING, "waiting for the worker")
    if state in (DeliveryState.RESOLVING, DeliveryState.ACTING):
        return Why(Cause.IN_PROGRESS, f"being processed (attempt {delivery.attempts})")
    return _why_done(delivery)


def _why_done(delivery: Delivery) -> Why:
    outcomes = _action_outcomes(delivery)
    if outcomes:
        ranked = sorted(outcomes, key=lambda o: _ACTION_RANK.get(o[0], 3 if o[0] is ActionState.DONE else 4))
        state, text = ranked[0]
        more = f" (+{len(outcomes) - 1} more action(s))" if len(outcomes) > 1 else ""
        return Why(_ACTION_CAUSE.get(state, Cause.ACTED), text + more)
    # An allowed claim with tasks always leaves an action (or "already done") behind, so a
    # claim with tasks and no action was refused, by the policy or the signature check.
    refused = [c for c in delivery.correlations if c.dag_id is not None and c.task_ids]
    if refused:
        return Why(Cause.REFUSED, refused[-1].verdict)
    taskless = [c for c in delivery.correlations if c.dag_id is not None]
    if taskless:
        c = taskless[-1]
        return Why(
            Cause.NOTHING_TO_DO,
            f"commit {c.commit[:12]} names {c.dag_id} run {c.run_id} but no Airflow-Task-Id: nothing to mark",
        )
    for decision in reversed(delivery.decisions):
        cause = decision.fields.get("cause")
        if isinstance(cause, str) and cause in Cause.__members__.values():
            return Why(Cause(cause), decision.text)
    if delivery.correlations:
        count = len(delivery.correlations)
        return Why(Cause.NO_TRAILERS, f"no Airflow trailers in the {count} commit(s) it made live")
    if delivery.decisions:
        return Why(Cause.NOTHING_TO_DO, delivery.decisions[-1].text)
    return Why(Cause.NOTHING_TO_DO, "nothing to do")


def _action_outcomes(delivery: Delivery) -> list[tuple[ActionState, str]]:
    """Each action's state and result, including actions another delivery had already done
    (those are recorded only as a decision on this one)."""
    outcomes = [(a.state, a.result) for a in delivery.actions]
    own = {a.key for a in delivery.actions}
    outcomes += [
        (ActionState.ALREADY, d.text)
        for d in delivery.decisions
        if "action" in d.fields and d.fields["action"] not in own
    ]
    return outcomes


def _clock(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class CommitStory:
    correlation: Correlation
    trailers: tuple[tuple[str, str], ...]
    """The Airflow trailers as Fluxback read them."""
    links: tuple[Link, ...]


@dataclass(frozen=True)
class ActionStory:
    record: ActionRecord
    links: tuple[Link, ...]


@dataclass(frozen=True)
class Story:
    delivery: Delivery
    why: Why
    event: Any
    """The event as Flux sent it."""
    commits: tuple[CommitStory, ...]
    decisions: tuple[Decision, ...]
    actions: tuple[ActionStory, ...]

    @property
    def airflow_links(self) -> tuple[Link, ...]:
        """Every Airflow run and task instance the delivery named or touched, each once."""
        found = [link for c in self.commits for link in c.links]
        found += [link for a in self.actions for link in a.links]
        return tuple(dict.fromkeys(found))

    @property
    def event_text(self) -> str:
        """The event as Flux sent it, laid out for reading."""
        if isinstance(self.event, str):
            return self.event
        return json.dumps(self.event, indent=2, ensure_ascii=False)


def story(delivery: Delivery, links: AirflowLinks) -> Story:
    """Everything recorded for one delivery, with links to what it touched in Airflow."""
    return Story(
        delivery=delivery,
        why=why(delivery),
        event=event_json(delivery.body),
        commits=tuple(
            CommitStory(correlation=c, trailers=_trailers(c), links=_commit_links(c, links))
            for c in delivery.correlations
        ),
        decisions=delivery.decisions,
        actions=tuple(ActionStory(record=a, links=_action_links(a, links)) for a in delivery.actions),
    )


def _trailers(c: Correlation) -> tuple[tuple[str, str], ...]:
    if c.dag_id is None:
        return ()
    pairs = [("Airflow-Dag-Id", c.dag_id), ("Airflow-Run-Id", c.run_id or "")]
    pairs += [("Airflow-Task-Id", task) for task in c.task_ids]
    if c.map_index is not None:
        pairs.append(("Airflow-Map-Index", str(c.map_index)))
    if c.instance is not None:
        pairs.append(("Airflow-Instance", c.instance))
    return tuple(pairs)


def _commit_links(c: Correlation, links: AirflowLinks) -> tuple[Link, ...]:
    if c.dag_id is None or c.run_id is None:
        return ()
    found = [links.run(c.instance, c.dag_id, c.run_id)]
    found += [links.task(c.instance, c.dag_id, c.run_id, task, c.map_index) for task in c.task_ids]
    return tuple(link for link in found if link is not None)


def _action_links(action: ActionRecord, links: AirflowLinks) -> tuple[Link, ...]:
    target = action.target
    instance, dag_id = target.get("instance"), target.get("dag_id")
    if not isinstance(dag_id, str):
        return ()
    if action.kind == "mark_task":
        found = links.task(instance, dag_id, target["run_id"], target["task_id"], target.get("map_index"))
    elif action.kind == "trigger_dag":
        found = links.run(instance, dag_id, target["dag_run_id"])
    else:
        found = None
    return () if found is None else (found,)


def event_json(body: bytes) -> Any:
    """The event as Flux sent it; bodies were validated on the way in, so this is JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Page:
    deliveries: list[Delivery]
    next_before: int | None
    """Pass as `before_id` for the next (older) page; None when this page was the last."""


async def explained(journal: Journal, query: DeliveryFilter) -> Page:
    """The deliveries `query` finds, each with what `why` needs (decisions, commits, actions)."""
    found = await journal.list(query)
    full = [await journal.get(s.id) for s in found]
    return Page(
        deliveries=[d for d in full if d is not None],  # one pruned between the two reads is gone
        next_before=found[-1].id if len(found) == query.limit else None,
    )


# JSON shapes, shared by the HTTP API and `fluxback deliveries --output json`.


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def summary_json(summary: DeliverySummary) -> dict[str, Any]:
    return {
        "id": summary.id,
        "state": summary.state.value,
        "received_at": _iso(summary.received_at),
        "updated_at": _iso(summary.updated_at),
        "object": {
            "kind": summary.kind,
            "namespace": summary.namespace,
            "name": summary.name,
            "key": summary.object_key,
        },
        "reason": summary.reason,
        "severity": summary.severity,
        "outcome": summary.outcome,
        "revision": summary.revision,
        "commit": summary.commit,
        "attempts": summary.attempts,
        "next_attempt_at": _iso(summary.next_attempt_at),
        "duplicate_of": summary.duplicate_of,
        "last_error": summary.last_error,
        "source": summary.source,
    }


def listed_json(delivery: Delivery) -> dict[str, Any]:
    """One row of a list: the summary and why."""
    return {**summary_json(delivery), "why": why(delivery).json()}


def _links_json(links: Sequence[Link]) -> list[dict[str, str]]:
    return [{"text": link.text, "url": link.url} for link in links]


def story_json(told: Story) -> dict[str, Any]:
    delivery = told.delivery
    return {
        **summary_json(delivery),
        "why": told.why.json(),
        "authenticated_by": delivery.authenticated_by,
        "event": told.event,
        "decisions": [{"at": _iso(d.at), "text": d.text, "fields": dict(d.fields)} for d in told.decisions],
        "correlations": [
            {
                "commit": c.correlation.commit,
                "committed_at": _iso(c.correlation.committed_at),
                "subject": c.correlation.subject,
                "dag_id": c.correlation.dag_id,
                "run_id": c.correlation.run_id,
                "task_ids": list(c.correlation.task_ids),
                "map_index": c.correlation.map_index,
                "instance": c.correlation.instance,
                "verdict": c.correlation.verdict,
                "links": _links_json(c.links),
            }
            for c in told.commits
        ],
        "actions": [
            {
                "key": a.record.key,
                "kind": a.record.kind,
                "target": dict(a.record.target),
                "state": a.record.state.value,
                "result": a.record.result,
                "attempts": a.record.attempts,
                "created_at": _iso(a.record.created_at),
                "updated_at": _iso(a.record.updated_at),
                "links": _links_json(a.links),
            }
            for a in told.actions
        ],
    }
