"""Every PromQL expression in the dashboards and alert rules parses and names only what Fluxback exports.

A real `fluxback serve` process gets real Flux events (a deploy, a failure, a delivery that becomes
a dead letter because Airflow is down, a Flux object's status from an emulated Kubernetes API),
then its `/metrics` is scraped and linted by `promtool check metrics`. promtool (Prometheus's own
parser and type checker) checks every expression; promql-parser walks each one to find the metric
names and label names it uses, which must appear in the scrape. So a typo or a renamed metric or
label fails here instead of leaving an empty panel or an alert that never fires.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import kmock
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from receiver.kube.kinds import KUSTOMIZATION
from tests.flux_replay import event_body, post_event
from tests.gitops import GitOpsRepo
from tests.helpers import free_port
from tests.integration.fluxback_service import HMAC_KEY, FluxbackService, kustomization
from tests.kube_cluster import (
    applied,
    controller_client,
    create,
    declare_flux_kinds,
    eventually,
    kubeconfig_text,
    lowercase_watch_flag,
)
from tests.kube_cluster import kustomization as flux_kustomization

pytestmark = pytest.mark.integration

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
GRAFANA_WINDOWS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
"""Grafana fills these in before a query reaches Prometheus; promtool gets a fixed window instead."""
TARGET_LABELS = frozenset({"job", "instance"})
"""Labels Prometheus adds to every scraped series."""
WITHOUT_SERIES_HERE = {
    "fluxback_watch_restarts_total": "a Kubernetes list or watch that failed",
}
"""Declared in the scrape, but with series only after what the value says; their label names go unchecked."""
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel query, variable query and alert rule, Grafana windows filled in."""
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.stem}: {panel['title']} ({target['refId']})", target["expr"]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                # label_values(<selector>, <label>): the selector must hold, and carry the label.
                found = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
                assert found, f"{path.name}: variable {variable['name']}: {variable['query']}"
                yield f"{path.stem}: variable {variable['name']}", f"count by ({found[2]}) ({found[1]})"
    for group in yaml.safe_load((DASHBOARDS / "alerts.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            yield f"alerts.yaml: {rule['alert']}", rule["expr"]


def prometheus_ready(where: str, expr: str) -> str:
    for placeholder, window in GRAFANA_WINDOWS.items():
        expr = expr.replace(placeholder, window)
    assert "$__" not in expr, f"{where}: a Grafana variable this test does not know: {expr}"
    return expr


def used(expr: str) -> tuple[list[promql_parser.VectorSelector], list[tuple[list[str], set[str]]]]:
    """The selectors of `expr`, and for each `by`/`on` clause its labels and the metrics below it."""
    selectors: list[promql_parser.VectorSelector] = []
    groupings: list[tuple[list[str], set[str]]] = []

    def names_below(node: promql_parser.Expr) -> set[str]:
        below: set[str] = set()

        def visit(inner: promql_parser.Expr) -> bool:
            if isinstance(inner, promql_parser.VectorSelector) and inner.name:
                below.add(inner.name)
            return True

        promql_parser.walk(node, visit)
        return below

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            groupings.append((list(node.modifier.labels), names_below(node.expr)))
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier and node.modifier.matching:
            groupings.append((list(node.modifier.matching.labels), names_below(node)))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return selectors, groupings


def exported(scrape: str) -> tuple[dict[str, set[str]], set[str]]:
    """Every sample name the service declares -> the label names of its series; the names with series."""
    labels: dict[str, set[str]] = defaultdict(set)
    sampled: set[str] = set()
    for family in text_string_to_metric_families(scrape):
        for suffix in SUFFIXES[family.type]:
            labels.setdefault(family.name + suffix, set())  # declared even without any series yet
        for sample in family.samples:
            labels[sample.name] |= set(sample.labels)
            sampled.add(sample.name)
    return labels, sampled


@pytest.fixture
async def scrape(
    tmp_path: Path, kmock: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """/metrics of a `fluxback serve` that handled a deploy, a failure, a dead letter, a forgery
    and a Flux object's status read from the (emulated) Kubernetes API."""
    lowercase_watch_flag(monkeypatch)
    declare_flux_kinds(kmock)
    repo = GitOpsRepo(tmp_path / "git")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "hmac").write_bytes(HMAC_KEY)
    (secrets / "airflow-token").write_text("token")
    (tmp_path / "kubeconfig").write_text(kubeconfig_text(str(kmock.url)))
    config = {
        "journal": f"sqlite:///{tmp_path / 'journal.db'}",
        "webhook": {"hmac_keys": [str(secrets / "hmac")]},
        "git": {
            "cache_dir": str(tmp_path / "git-cache"),
            "repositories": [{"name": "flux-system/flux-system", "url": repo.url}],
            "objects": [kustomization("apps")],
        },
        "airflow": {
            "instances": {
                "default": {  # nothing listens there: every call fails without an answer
                    "url": f"http://127.0.0.1:{free_port()}",
                    "token_file": str(secrets / "airflow-token"),
                    "timeout_seconds": 1,
                }
            }
        },
        "policy": [{"match": {"name": "apps"}, "dags": ["deploy"]}],
        "worker": {"poll_interval_seconds": 0.1, "max_attempts": 1},
        "kubernetes": {"enabled": True, "kubeconfig": str(tmp_path / "kubeconfig")},
        "log": {"format": "json"},
    }
    service = FluxbackService(tmp_path, config)
    await asyncio.to_thread(service.start)  # the emulated API server answers meanwhile
    try:
        await _drive(service, repo, kmock)
        yield await service.metrics_text()
    finally:
        await asyncio.to_thread(service.stop)


async def _drive(service: FluxbackService, repo: GitOpsRepo, cluster: kmock.KubernetesEmulator) -> None:
    async def settled(delivery_id: int) -> str:
        return str((await service.wait_delivery(delivery_id))["state"])

    live = repo.commit({"apps/a.yaml": "a: 1\n"}, "plain change")
    assert await settled(await service.report(live)) == "done"
    broken = repo.commit({"apps/a.yaml": "a: [\n"}, "broken")
    failed = await service.report(broken, reason="BuildFailed", severity="error", message="bad yaml")
    assert await settled(failed) == "done"
    waiting = {"Airflow-Dag-Id": "deploy", "Airflow-Run-Id": "r1", "Airflow-Task-Id": "wait"}
    authored = repo.commit({"apps/a.yaml": "a: 2\n"}, "authored by a run", waiting)
    assert await settled(await service.report(authored)) == "dead"  # Airflow is down
    async with aiohttp.ClientSession() as session:
        status, _ = await post_event(
            session, f"{service.url}/flux/events", event_body(), hmac_key=b"not the key"
        )
    assert status == 401
    # Flux's kustomize-controller reports the live revision in the object's status.
    async with controller_client(cluster) as flux:
        await create(flux, KUSTOMIZATION, flux_kustomization("apps", status=applied(repo.revision(live))))

    async def status_read() -> bool:
        return "fluxback_status_changes_total{" in await service.metrics_text()

    await eventually(status_read, seconds=30)


def test_every_expression_parses_and_names_only_exported_metrics(scrape: str, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (scripts/test says so too)"
    found = [(where, prometheus_ready(where, expr)) for where, expr in expressions()]
    rules = {
        "groups": [
            {
                "name": "dashboards-and-alerts",
                "rules": [{"record": f"check:expr_{i}", "expr": expr} for i, (_, expr) in enumerate(found)],
            }
        ]
    }
    (tmp_path / "expressions.yaml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "expressions.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    index = "\n".join(f"check:expr_{i} = {where}" for i, (where, _) in enumerate(found))
    assert checked.returncode == 0, f"{checked.stdout}{checked.stderr}\n{index}"
    assert f"SUCCESS: {len(found)} rules found" in checked.stdout

    linted = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, check=False
    )
    assert linted.returncode == 0, f"promtool's lint of /metrics: {linted.stdout}{linted.stderr}"

    labels, sampled = exported(scrape)
    problems: list[str] = []
    for where, expr in found:
        selectors, groupings = used(expr)
        for selector in selectors:
            name = selector.name or ""
            if name not in labels:
                problems.append(f"{where}: {name or selector} is not exported")
            elif name in sampled:
                problems += [
                    f"{where}: {name} has no label {matcher.name}"
                    for matcher in selector.matchers.matchers
                    if matcher.name not in labels[name] | TARGET_LABELS
                ]
        for grouping, below in groupings:
            if below <= sampled:
                known = set().union(*(labels[name] for name in below)) | TARGET_LABELS
                problems += [
                    f"{where}: no metric in it has label {label}" for label in grouping if label not in known
                ]
    unsampled = {selector.name for _, expr in found for selector in used(expr)[0]} - sampled
    assert not problems, "\n".join(problems)
    assert unsampled == set(WITHOUT_SERIES_HERE), "update WITHOUT_SERIES_HERE to what has no series here"
    # The events driven above reached the per-object metrics the deploys dashboard is about.
    apps = 'kind="Kustomization",name="apps",namespace="flux-system"'
    assert f'fluxback_deploys_total{{{apps},outcome="success"}} 1.0' in scrape
    assert f'fluxback_deploys_total{{{apps},outcome="failure"}} 1.0' in scrape
