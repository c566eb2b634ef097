"""The RBAC manifest grants exactly what receiver/kube uses, so the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import yaml

from receiver.kube.kinds import WATCHED

MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "rbac.yaml"


def test_the_cluster_role_covers_every_watched_kind_and_events_and_nothing_more() -> None:
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}
    assert set(documents) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    granted = {
        (group, resource): sorted(rule["verbs"])
        for rule in documents["ClusterRole"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    expected = {(kind.group, kind.plural): ["get", "list", "watch"] for kind in WATCHED}
    expected[("events.k8s.io", "events")] = ["create", "patch"]
    assert granted == expected
    binding, account = documents["ClusterRoleBinding"], documents["ServiceAccount"]
    assert binding["roleRef"]["name"] == documents["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
