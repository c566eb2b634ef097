"""Policy and rule matching: globs, outcomes, event metadata, the deny-by-default policy."""

from __future__ import annotations

from receiver.config import Match, PolicyEntry, Rule, TriggerSpec
from receiver.rules import EventFacts, Policy, matches, rule_actions

APPS = EventFacts(
    kind="Kustomization",
    namespace="flux-system",
    name="apps",
    outcome="success",
    metadata={"cluster": "prod-eu-1", "revision": "main@sha1:" + "a" * 40},
)


def test_match_uses_globs_and_requires_metadata() -> None:
    assert matches(Match(), APPS)
    assert matches(Match(kind="Kustomization", name="ap*", metadata={"cluster": "prod-*"}), APPS)
    assert not matches(Match(metadata={"cluster": "staging-*"}), APPS)
    assert not matches(Match(metadata={"env": "*"}), APPS)  # a missing key never matches
    assert not matches(Match(outcome="failure"), APPS)
    assert not matches(Match(kind="HelmRelease"), APPS)


def test_policy_denies_by_default_and_allows_listed_dags() -> None:
    assert not Policy(()).allows(APPS, "deploy_model", "default")
    policy = Policy(
        (
            PolicyEntry(match=Match(namespace="flux-system"), dags=("deploy_*",)),
            PolicyEntry(match=Match(name="infra"), dags=("*",)),
            PolicyEntry(match=Match(), dags=("reports",), instances=("analytics",)),
        )
    )
    assert policy.allows(APPS, "deploy_model", "default")
    assert not policy.allows(APPS, "drop_tables", "default")
    assert policy.allows(APPS, "reports", "analytics")
    assert not policy.allows(APPS, "reports", "default")


def test_rule_actions_collect_each_action_once() -> None:
    rules = (
        Rule(match=Match(outcome="success"), assets=("flux://x",), trigger=(TriggerSpec(dag_id="post"),)),
        Rule(match=Match(name="apps"), assets=("flux://x",), object_asset=True),
        Rule(match=Match(outcome="failure"), trigger=(TriggerSpec(dag_id="rollback"),)),
    )
    planned = rule_actions(rules, APPS, "default")
    assert [t.dag_id for t in planned.triggers] == ["post"]
    assert [a.uri for a in planned.assets] == ["flux://x", "flux://prod-eu-1/Kustomization/flux-system/apps"]
    assert planned.problems == ()


def test_object_asset_uses_configured_cluster_and_reports_bad_names() -> None:
    rule = (Rule(match=Match(), object_asset=True),)
    plain = EventFacts(kind="HelmRelease", namespace="data", name="etl", outcome="success", metadata={})
    assert [a.uri for a in rule_actions(rule, plain, "prod").assets] == ["flux://prod/HelmRelease/data/etl"]
    odd = EventFacts(
        kind="HelmRelease", namespace="data", name="etl", outcome="success", metadata={"cluster": "a/b"}
    )
    planned = rule_actions(rule, odd, "prod")
    assert planned.assets == ()
    assert "cannot be part of a Flux asset URI" in planned.problems[0]
