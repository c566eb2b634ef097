"""Configuration loading: the YAML contract, FLUXBACK_* overrides, and errors that name their keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.config import ConfigError, KubernetesConfig, load_config, parse_config, startup_problems


def _errors(raw: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "<test>", environ=environ or {})
    return caught.value.errors


def test_defaults() -> None:
    config = parse_config({}, environ={})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9292)
    assert config.webhook.max_body_bytes == 1024 * 1024
    assert config.webhook.allow_unauthenticated is False
    assert config.webhook.max_clock_skew_seconds == 0
    assert config.log.format == "auto"


def test_the_design_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "fluxback.yaml"
    path.write_text(
        """
listen: "0.0.0.0:9292"
journal: "sqlite:///var/lib/fluxback/journal.db"
webhook:
  hmac_keys: ["/etc/fluxback/hmac/token", "/etc/fluxback/hmac/next"]
  bearer_tokens: []
  allow_unauthenticated: false
  max_body_bytes: 1048576
admin_tokens: ["/etc/fluxback/admin/token"]
""",
        encoding="utf-8",
    )
    config = load_config(path, environ={})
    assert config.webhook.hmac_keys == (Path("/etc/fluxback/hmac/token"), Path("/etc/fluxback/hmac/next"))
    assert config.admin_tokens == (Path("/etc/fluxback/admin/token"),)
    assert config.sqlite_path == Path("/var/lib/fluxback/journal.db")
    assert config.source == str(path)


def test_environment_overrides() -> None:
    config = parse_config(
        {"webhook": {"max_body_bytes": 10}},
        environ={
            "FLUXBACK_WEBHOOK__MAX_BODY_BYTES": "2048",
            "FLUXBACK_WEBHOOK__HMAC_KEYS": "[/run/a, /run/b]",
            "FLUXBACK_LISTEN": "127.0.0.1:8080",
            "FLUXBACK_LOG__FORMAT": "json",
        },
    )
    assert config.webhook.max_body_bytes == 2048
    assert config.webhook.hmac_keys == (Path("/run/a"), Path("/run/b"))
    assert config.listen_port == 8080
    assert config.log.format == "json"


def test_every_error_is_reported_with_its_key() -> None:
    errors = _errors(
        {
            "listen": "no-port",
            "webhook": {"max_body_bytes": -1, "hmac_keys": "/inline/secret", "extra": 1},
            "log": {"format": "xml"},
        }
    )
    keys = sorted(error.split(":")[0] for error in errors)
    assert keys == ["listen", "log.format", "webhook.extra", "webhook.hmac_keys", "webhook.max_body_bytes"]
    assert any("secrets are never inline" in error for error in errors)


def test_an_unknown_environment_key_is_an_error() -> None:
    assert _errors({}, {"FLUXBACK_WEBHOK__MAX_BODY_BYTES": "1"}) == [
        "FLUXBACK_WEBHOK__MAX_BODY_BYTES: does not name a configuration key"
    ]


def test_environment_values_are_checked_like_the_file() -> None:
    (error,) = _errors({}, {"FLUXBACK_WEBHOOK__MAX_BODY_BYTES": "lots"})
    assert error.startswith("webhook.max_body_bytes: must be a positive integer")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "missing.yaml", environ={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("webhook: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken, environ={})


def test_startup_problems_name_keys(tmp_path: Path) -> None:
    config = parse_config({"webhook": {"hmac_keys": [str(tmp_path / "missing")]}}, environ={})
    assert startup_problems(config) == [f"webhook.hmac_keys[0]: cannot read file {tmp_path / 'missing'}"]
    no_auth = parse_config({}, environ={})
    assert startup_problems(no_auth) == [
        "webhook: no hmac_keys and no bearer_tokens; set one, or allow_unauthenticated: true"
    ]
    assert startup_problems(parse_config({"webhook": {"allow_unauthenticated": True}}, environ={})) == []


def test_the_example_dev_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).parents[2]
    monkeypatch.chdir(root)
    config = load_config("examples/config/dev.yaml", environ={})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9292)
    assert startup_problems(config) == []


def test_urls_with_credentials_and_unknown_default_instance_are_refused() -> None:
    raw = {
        "git": {
            "repositories": [{"name": "flux-system/fleet", "url": "https://ghp_x@github.com/acme/fleet.git"}]
        },
        "airflow": {
            "default_instance": "prod",
            "instances": {"default": {"url": "http://admin:pw@airflow:8080", "token_file": "/t"}},
        },
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "<test>", environ={})
    assert caught.value.errors == [
        "airflow.default_instance: no Airflow instance 'prod' in airflow.instances",
        "git.repositories[0].url: must not carry a user or password; use token_file or the *_file keys",
        "airflow.instances.default.url: must not carry a user or password; use token_file or the *_file keys",
    ]
    assert all("ghp_x" not in e and "pw@" not in e for e in caught.value.errors)


def test_the_kubernetes_section(tmp_path: Path) -> None:
    assert parse_config({}, environ={}).kubernetes == KubernetesConfig()
    kubeconfig = tmp_path / "kubeconfig"
    config = parse_config(
        {
            "kubernetes": {
                "enabled": True,
                "kubeconfig": str(kubeconfig),
                "namespaces": ["flux-system", "apps"],
            }
        },
        environ={"FLUXBACK_KUBERNETES__RESYNC_SECONDS": "60"},
    )
    assert config.kubernetes == KubernetesConfig(
        enabled=True, kubeconfig=kubeconfig, namespaces=("flux-system", "apps"), resync_seconds=60.0
    )
    assert startup_problems(config)[0] == f"kubernetes.kubeconfig: cannot read file {kubeconfig}"
    with pytest.raises(ConfigError) as raised:
        parse_config({"kubernetes": {"enabled": "yes", "resync_seconds": 0, "event": False}}, environ={})
    assert sorted(raised.value.errors) == [
        "kubernetes.enabled: must be true or false, got 'yes'",
        "kubernetes.event: unknown key (known keys: enabled, events, kubeconfig, namespaces, resync_seconds)",
        "kubernetes.resync_seconds: must be a positive number, got 0",
    ]
