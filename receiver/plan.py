"""Planning: the Airflow actions a resolved delivery asks for, as data, before any is performed.

Marking the tasks of the authoring runs comes first, then the rules' DAG triggers and
asset events, each once. Planning reads nothing and calls nothing, so what a delivery
will do can be told (and tested) apart from doing it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from receiver.actions import Action, AssetEvent, MarkTask, TriggerDag
from receiver.config import Config
from receiver.journal import Delivery
from receiver.resolve import Resolution
from receiver.rules import EventFacts, rule_actions

_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.~:+-]")


@dataclass(frozen=True, kw_only=True)
class Plan:
    actions: tuple[Action, ...]
    """In the order they are performed."""
    problems: tuple[str, ...] = ()
    """Rule parts that could not be planned, in words for the delivery's decisions."""


def plan_actions(delivery: Delivery, facts: EventFacts, resolution: Resolution, config: Config) -> Plan:
    """Every action for the delivery: the authoring runs' tasks, then the matching rules' actions."""
    payload = _payload(delivery, facts, resolution)
    rules = rule_actions(config.rules, facts, config.cluster)
    triggers = [
        TriggerDag(
            instance=trigger.instance,
            dag_id=trigger.dag_id,
            dag_run_id=trigger_run_id(
                delivery.object_key, delivery.revision, delivery.outcome, trigger.dag_id, resolution.commit
            ),
            conf=payload,
            note=f"Fluxback: {delivery.object_key} {delivery.outcome} at {delivery.revision}",
        )
        for trigger in rules.triggers
    ]
    assets = [
        AssetEvent(
            instance=asset.instance,
            uri=asset.uri,
            key=f"asset:{asset.instance}:{asset.uri}:{delivery.object_key}"
            f":{resolution.commit or delivery.revision}:{delivery.outcome}",
            extra=payload,
        )
        for asset in rules.assets
    ]
    return Plan(actions=(*_task_marks(delivery, resolution), *triggers, *assets), problems=rules.problems)


def _task_marks(delivery: Delivery, resolution: Resolution) -> Sequence[MarkTask]:
    """Each task an authoring run named, set to the deploy's outcome."""
    new_state: Literal["success", "failed"] = "success" if delivery.outcome == "success" else "failed"
    return [
        MarkTask(
            instance=run.instance,
            dag_id=run.claim.dag_id,
            run_id=run.claim.run_id,
            task_id=task_id,
            map_index=run.claim.map_index,
            new_state=new_state,
            note=f"Fluxback: {delivery.object_key} reported {delivery.outcome} ({delivery.reason})"
            f" for revision {delivery.revision} including commit {run.commit.sha[:12]};"
            f" delivery {delivery.id}",
        )
        for run in resolution.runs
        for task_id in run.claim.task_ids
    ]


def trigger_run_id(
    object_key: str, revision: str | None, outcome: str, dag_id: str, commit: str | None
) -> str:
    """A deterministic DAG run id: the same event and rule always name the same run (409 = done)."""
    digest = hashlib.sha256(f"{object_key}\n{revision}\n{outcome}\n{dag_id}".encode()).hexdigest()[:16]
    name = object_key.rsplit("/", 1)[-1]
    return _RUN_ID_UNSAFE.sub("-", f"fluxback__{name}__{(commit or 'none')[:12]}__{outcome}__{digest}")


def _payload(delivery: Delivery, facts: EventFacts, resolution: Resolution) -> dict[str, Any]:
    """What triggered DAG runs get as `conf` and asset events as `extra`."""
    return {
        "delivery_id": delivery.id,
        "object": {"kind": delivery.kind, "namespace": delivery.namespace, "name": delivery.name},
        "outcome": delivery.outcome,
        "reason": delivery.reason,
        "revision": delivery.revision,
        "commit": resolution.commit,
        "commits": [c.sha for c in resolution.commits],
        "authoring_runs": [
            {
                "dag_id": r.claim.dag_id,
                "run_id": r.claim.run_id,
                "instance": r.instance,
                "commit": r.commit.sha,
            }
            for r in resolution.runs
        ],
        "metadata": dict(facts.metadata),
    }
