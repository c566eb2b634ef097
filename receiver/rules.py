"""Which Flux events may touch which DAGs, and which extra actions they cause.

A commit trailer is a *claim* made by whoever could push to the repository.
The policy decides which DAG ids such a claim may name for each Flux object;
with no policy entry nothing is allowed, so a new installation acts on nothing
until an operator says which objects speak for which DAGs. Rules add actions
of their own (trigger a DAG run, emit asset events) on matching outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from receiver.assets import flux_object_uri
from receiver.config import Match, PolicyEntry, Rule, TriggerSpec


@dataclass(frozen=True, kw_only=True)
class EventFacts:
    """What matching looks at: the Flux object, the outcome and the event's metadata."""

    kind: str
    namespace: str
    name: str
    outcome: str
    metadata: Mapping[str, str]


def matches(match: Match, facts: EventFacts) -> bool:
    """Every field is a glob; metadata keys must be present and match."""
    return (
        fnmatchcase(facts.kind, match.kind)
        and fnmatchcase(facts.namespace, match.namespace)
        and fnmatchcase(facts.name, match.name)
        and fnmatchcase(facts.outcome, match.outcome)
        and all(
            key in facts.metadata and fnmatchcase(facts.metadata[key], pattern)
            for key, pattern in match.metadata.items()
        )
    )


@dataclass(frozen=True)
class Policy:
    entries: Sequence[PolicyEntry]

    def allows(self, facts: EventFacts, dag_id: str, instance: str) -> bool:
        """True when some entry matching the event lists a glob for this DAG and instance."""
        return any(
            matches(entry.match, facts)
            and any(fnmatchcase(dag_id, pattern) for pattern in entry.dags)
            and any(fnmatchcase(instance, pattern) for pattern in entry.instances)
            for entry in self.entries
        )


@dataclass(frozen=True, kw_only=True)
class PlannedAsset:
    uri: str
    instance: str


@dataclass(frozen=True, kw_only=True)
class RuleActions:
    triggers: tuple[TriggerSpec, ...]
    assets: tuple[PlannedAsset, ...]
    problems: tuple[str, ...] = ()
    """Rule parts that could not be planned, in words for the delivery's decisions."""


def rule_actions(rules: Sequence[Rule], facts: EventFacts, cluster: str) -> RuleActions:
    """The triggers and asset events of every matching rule, each once, in rule order.

    `cluster` names this cluster in object asset URIs when the event's metadata has no `cluster`.
    """
    triggers: dict[tuple[str, str], TriggerSpec] = {}
    assets: dict[tuple[str, str], PlannedAsset] = {}
    problems: list[str] = []
    for rule in rules:
        if not matches(rule.match, facts):
            continue
        for trigger in rule.trigger:
            triggers.setdefault((trigger.instance, trigger.dag_id), trigger)
        uris = list(rule.assets)
        if rule.object_asset:
            cluster_name = facts.metadata.get("cluster", cluster)
            try:
                uris.append(flux_object_uri(cluster_name, facts.kind, facts.namespace, facts.name))
            except ValueError as problem:
                problems.append(f"no object asset event: {problem}")
        for uri in uris:
            assets.setdefault((rule.asset_instance, uri), PlannedAsset(uri=uri, instance=rule.asset_instance))
    return RuleActions(
        triggers=tuple(triggers.values()), assets=tuple(assets.values()), problems=tuple(problems)
    )
