"""The configuration file the chart renders is one `fluxback check-config` accepts, in the pod's
file layout; and the values schema refuses what cannot work, saying why."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.tools import REPO, VALUE_SETS, Rendered, refusal, render, run, tool

POD_ETC = "/etc/fluxback/"


def _relocated(value: Any, root: Path) -> Any:
    """`value` with every path under /etc/fluxback moved under `root`, as a chroot would see it."""
    if isinstance(value, dict):
        return {key: _relocated(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_relocated(item, root) for item in value]
    if isinstance(value, str) and value.startswith(POD_ETC):
        return str(root) + value
    return value


def pod_files(rendered: Rendered, root: Path) -> Path:
    """Writes the files the container sees under /etc/fluxback into `root` (the ConfigMap and the
    keys of every mounted Secret) and returns the config file, its paths moved under `root`."""
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    container = pod["containers"][0]
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume:
            files = rendered.secret_data(volume["secret"]["secretName"])
        elif "configMap" in volume:
            files = rendered.one("ConfigMap", volume["configMap"]["name"])["data"]
        else:
            continue
        folder = root / mount["mountPath"].lstrip("/")
        folder.mkdir(parents=True)
        for key, content in files.items():
            (folder / key).write_text(content)
    config_path = next(env["value"] for env in container["env"] if env["name"] == "FLUXBACK_CONFIG")
    config = yaml.safe_load((root / config_path.lstrip("/")).read_text())
    relocated = root / "config.yaml"
    relocated.write_text(yaml.safe_dump(_relocated(config, root)))
    return relocated


def _unsupported_capability(config: dict[str, Any], scratch: Path) -> str | None:
    """A capability the chart renders that this build's check-config refuses even alone (it lands
    from another part of the project), found by checking a minimal config that uses only it."""
    probes: dict[str, dict[str, Any]] = {}
    if str(config.get("journal", "")).startswith("postgresql://"):
        password = scratch / "probe-password"
        password.write_text("x")
        probes["the PostgreSQL journal (journal: postgresql://…, journal_password_file)"] = {
            "journal": "postgresql://fluxback@localhost:5432/fluxback",
            "journal_password_file": str(password),
        }
    if "kubernetes" in config:
        probes["the `kubernetes` settings (Flux status watches)"] = {"kubernetes": {"enabled": True}}
    for capability, snippet in probes.items():
        probe = scratch / "probe.yaml"
        probe.write_text(yaml.safe_dump({"webhook": {"allow_unauthenticated": True}, **snippet}))
        result = run(tool("fluxback"), "check-config", "--config", str(probe))
        if result.returncode != 0:
            return f"{capability}: {result.stderr.strip()}"
    return None


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_check_config_accepts_the_rendered_config(name: str, tmp_path: Path) -> None:
    rendered = render(VALUE_SETS[name])
    config = pod_files(rendered, tmp_path / "pod")
    missing = _unsupported_capability(rendered.config, tmp_path)
    if missing:
        pytest.xfail(f"fluxback check-config does not accept {missing}")
    result = run(tool("fluxback"), "check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


def test_check_config_fails_when_a_secret_file_is_not_mounted(tmp_path: Path) -> None:
    """The check above would catch a config path that no mounted Secret provides."""
    rendered = render(VALUE_SETS["defaults"])
    config = pod_files(rendered, tmp_path / "pod")
    (tmp_path / "pod/etc/fluxback/secrets/airflow/default/password").unlink()
    result = run(tool("fluxback"), "check-config", "--config", str(config))
    assert result.returncode == 1
    assert "airflow.instances.default.password_file: cannot read file" in result.stderr


def test_schema_refuses_sqlite_with_two_replicas() -> None:
    said = refusal(VALUE_SETS["defaults"], "replicas=2")
    assert "at '/replicas': maximum: got 2, want 1" in said
    assert "at '/journal/type': value must be 'postgresql'" in said


def test_schema_refuses_a_rolling_update_with_sqlite() -> None:
    said = refusal(VALUE_SETS["defaults"], "strategy.type=RollingUpdate")
    assert "at '/strategy/type': value must be 'Recreate'" in said


def test_schema_refuses_a_missing_airflow_url() -> None:
    said = refusal(None, "airflow.existingSecret=airflow-credentials")
    assert "at '/airflow': missing property 'url'" in said


def test_schema_refuses_a_password_in_the_postgresql_dsn() -> None:
    said = refusal(
        VALUE_SETS["postgresql"], "journal.postgresql.dsn=postgresql://fluxback:secret@db/fluxback"
    )
    assert "at '/journal/postgresql/dsn'" in said


def test_existing_webhook_secret_needs_the_flux_side_secret_named() -> None:
    said = refusal(VALUE_SETS["defaults"], "webhook.existingSecret=fluxback-webhook")
    assert "flux.existingSecret: with webhook.existingSecret, create the Flux-side Secret yourself" in said


def test_values_schema_embeds_the_current_config_schema() -> None:
    result = run(sys.executable, str(REPO / "scripts" / "chart-values-schema"), "--check")
    assert result.returncode == 0, result.stderr


def test_schema_refuses_an_unknown_or_invalid_config_setting() -> None:
    said = refusal(VALUE_SETS["defaults"], "config.worker.concurency=3", "config.webhook.max_body_bytes=-1")
    assert "at '/config/worker': additional properties 'concurency' not allowed" in said
    assert "at '/config/webhook/max_body_bytes': exclusiveMinimum: got -1, want 0" in said
