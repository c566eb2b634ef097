"""helm lint and helm template on every value set in charts/fluxback/ci, checked by kubernetes-validate
and the Flux CRD models, and what the rendered objects promise (security, probes, secrets as files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cloudcoil.models.fluxcd.notification import v1beta3

from tests.chart.tools import CHART, NAMESPACE, REPO, VALUE_SETS, Rendered, render, run, tool

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas at hand.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
# Kinds whose schema lives in a CRD: kubernetes-validate only warns about them; the Flux ones are
# checked with the Flux models below.
CRD_KINDS = {"Provider", "Alert", "ServiceMonitor", "PrometheusRule"}


@pytest.fixture(params=sorted(VALUE_SETS), scope="module")
def value_set(request: pytest.FixtureRequest) -> Path:
    return VALUE_SETS[request.param]


@pytest.fixture(scope="module")
def rendered(value_set: Path) -> Rendered:
    return render(value_set)


def test_the_value_sets_cover_what_ci_promises() -> None:
    assert {"defaults", "postgresql", "bearer", "monitoring", "existing-secrets"} <= set(VALUE_SETS)


def test_lint_strict(value_set: Path) -> None:
    result = run(tool("helm"), "lint", "--strict", str(CHART), "--values", str(value_set))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_strict_kubernetes_validation(version: str, tmp_path: Path) -> None:
    """All value sets in one kubernetes-validate run per version (loading its schemas is the slow part)."""
    files, expected = [], 0
    for name, values in sorted(VALUE_SETS.items()):
        rendered = render(values)
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(rendered.text)
        expected += sum(doc["kind"] not in CRD_KINDS for doc in rendered.docs)
    result = run(tool("kubernetes-validate"), "--strict", "-k", version, *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == expected, result.stdout + result.stderr


def test_flux_provider_and_alert_are_valid_and_point_at_the_service(rendered: Rendered) -> None:
    provider = v1beta3.Provider.model_validate(rendered.one("Provider"))
    alert = v1beta3.Alert.model_validate(rendered.one("Alert"))
    service = rendered.one("Service")
    port = service["spec"]["ports"][0]["port"]
    assert provider.spec is not None and alert.spec is not None
    assert provider.metadata is not None and alert.metadata is not None
    assert (
        provider.spec.address
        == f"http://{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}/flux/events"
    )
    assert alert.spec.provider_ref.name == provider.metadata.name
    assert alert.metadata.namespace == provider.metadata.namespace
    assert provider.spec.secret_ref is not None


def test_the_pod_is_locked_down(rendered: Rendered) -> None:
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    assert set(writable) <= {"/tmp", "/var/cache/fluxback", "/var/lib/fluxback"}


def test_secrets_are_whole_secret_volumes_never_env_vars(rendered: Rendered) -> None:
    """Only a whole-Secret volume (no subPath, no env) follows a rotated Secret without a restart."""
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "envFrom" not in container
    assert all(set(env) == {"name", "value"} for env in container["env"])
    assert all("subPath" not in mount for mount in container["volumeMounts"])
    secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
    assert {"webhook", "admin"} <= secret_volumes


def test_sqlite_runs_one_pod_recreated_on_a_kept_volume() -> None:
    rendered = render(VALUE_SETS["defaults"])
    deployment = rendered.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = rendered.one("PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert rendered.config["journal"] == "sqlite:///var/lib/fluxback/journal.db"
    assert not rendered.all("PodDisruptionBudget")


def test_postgresql_runs_replicas_spread_and_protected() -> None:
    rendered = render(VALUE_SETS["postgresql"])
    deployment = rendered.one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not rendered.all("PersistentVolumeClaim")
    assert rendered.config["journal"] == "postgresql://fluxback@postgres.databases:5432/fluxback"
    assert rendered.config["journal_password_file"] == "/etc/fluxback/secrets/journal/password"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["journal-password"]["secret"]["secretName"] == "fluxback-postgresql"


def test_one_generated_key_on_both_sides_with_hmac() -> None:
    rendered = render(VALUE_SETS["defaults"])
    provider = rendered.one("Provider")
    flux_secret = rendered.secret_data(provider["spec"]["secretRef"]["name"])
    assert provider["spec"]["type"] == "generic-hmac"
    assert len(flux_secret["token"]) >= 32
    assert flux_secret["token"] == rendered.secret_data("fluxback-webhook")["token"]
    assert rendered.config["webhook"]["hmac_keys"] == ["/etc/fluxback/secrets/webhook/token"]


def test_bearer_sends_the_generated_token_as_a_header() -> None:
    rendered = render(VALUE_SETS["bearer"])
    provider = rendered.one("Provider")
    headers = rendered.secret_data(provider["spec"]["secretRef"]["name"])["headers"]
    token = rendered.secret_data("fluxback-webhook")["token"]
    assert provider["spec"]["type"] == "generic"
    assert headers == f"Authorization: Bearer {token}"
    assert rendered.config["webhook"] == {
        "bearer_tokens": ["/etc/fluxback/secrets/webhook/token"],
        "hmac_keys": [],
    }


def test_existing_secrets_are_used_and_none_is_generated() -> None:
    rendered = render(VALUE_SETS["existing-secrets"])
    assert not rendered.all("Secret")
    assert rendered.one("Provider")["spec"]["secretRef"]["name"] == "fluxback-flux"
    webhook = rendered.config["webhook"]["hmac_keys"]
    assert webhook == ["/etc/fluxback/secrets/webhook/token", "/etc/fluxback/secrets/webhook/token-next"]


def test_a_config_change_rolls_the_pods_and_a_secret_change_does_not() -> None:
    def checksum(*sets: str) -> str:
        deployment = render(VALUE_SETS["defaults"], *sets).one("Deployment")
        annotation: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return annotation

    base = checksum()
    assert checksum("config.worker.concurrency=8") != base
    assert checksum("airflow.existingSecret=other-airflow-credentials") == base


def test_config_values_are_merged_over_what_the_chart_renders() -> None:
    config = render(VALUE_SETS["existing-secrets"]).config
    assert config["worker"] == {"concurrency": 8}
    assert config["airflow"]["instances"]["main"] == {
        "url": "https://airflow.example.internal",
        "token_file": "/etc/fluxback/secrets/airflow/main/token",
        "timeout_seconds": 20,
    }
    assert config["listen"] == "0.0.0.0:9292"


def test_network_policy_admits_only_flux_and_prometheus() -> None:
    policy = render(VALUE_SETS["monitoring"]).one("NetworkPolicy")
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert [s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in sources] == [
        "flux-system",
        "monitoring",
    ]
    assert sources[0]["podSelector"]["matchLabels"] == {"app": "notification-controller"}


def test_rbac_is_namespaced_when_namespaces_are_listed() -> None:
    rendered = render(VALUE_SETS["kubernetes"])
    assert [role["metadata"]["namespace"] for role in rendered.all("Role")] == [
        "flux-system",
        "data-pipelines",
    ]
    assert not rendered.all("ClusterRole")
    assert rendered.one("Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    cluster_wide = render(VALUE_SETS["kubernetes"], "kubernetes.namespaces=null")
    assert cluster_wide.one("ClusterRole")["rules"] == rendered.all("Role")[0]["rules"]
    assert not render(VALUE_SETS["defaults"]).all("ClusterRole")


def test_prometheus_rule_carries_exactly_the_projects_alert_rules() -> None:
    """Helm reads only the chart's files, so the chart holds a copy of dashboards/alerts.yaml."""
    alerts = REPO / "dashboards" / "alerts.yaml"
    assert (CHART / "files" / "alerts.yaml").read_text() == alerts.read_text(), (
        "cp dashboards/alerts.yaml charts/fluxback/files/"
    )
    rule = render(VALUE_SETS["monitoring"]).one("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(alerts.read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not render(VALUE_SETS["defaults"]).all("PrometheusRule")


def test_service_monitor_keeps_the_flux_objects_namespace_label() -> None:
    """The deploys dashboard filters on the Flux object's `namespace`, not `exported_namespace`."""
    [endpoint] = render(VALUE_SETS["monitoring"]).one("ServiceMonitor")["spec"]["endpoints"]
    assert (endpoint["path"], endpoint["honorLabels"]) == ("/metrics", True)


def test_rbac_rules_are_the_documented_minimum() -> None:
    """The same rules as examples/kubernetes/rbac.yaml, the RBAC for installs without the chart."""
    example = [doc for doc in yaml.safe_load_all((REPO / "examples/kubernetes/rbac.yaml").read_text()) if doc]
    expected = next(doc for doc in example if doc["kind"] == "ClusterRole")["rules"]
    rendered = render(VALUE_SETS["kubernetes"], "kubernetes.namespaces=null")
    assert rendered.one("ClusterRole")["rules"] == expected
