"""Configuration loading: the YAML contract, FLUXBACK_* overrides, and errors that name their keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from receiver.config import (
    ConfigError,
    KubernetesConfig,
    config_schema,
    config_schema_text,
    load_config,
    parse_config,
    parse_journal_url,
    startup_problems,
)


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


def test_urls_with_credentials_are_refused_without_echoing_them() -> None:
    raw = {
        "git": {
            "repositories": [{"name": "flux-system/fleet", "url": "https://ghp_x@github.com/acme/fleet.git"}]
        },
        "airflow": {"instances": {"default": {"url": "http://admin:pw@airflow:8080", "token_file": "/t"}}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "<test>", environ={})
    assert caught.value.errors == [
        "git.repositories[0].url: must not carry a user or password; use token_file or the *_file keys",
        "airflow.instances.default.url: must not carry a user or password; use token_file or the *_file keys",
    ]
    assert all("ghp_x" not in e and "pw@" not in e for e in caught.value.errors)


def test_an_unknown_default_instance_is_refused() -> None:
    raw = {
        "airflow": {
            "default_instance": "prod",
            "instances": {"default": {"url": "http://airflow:8080", "token_file": "/t"}},
        },
    }
    assert _errors(raw) == ["airflow.default_instance: no Airflow instance 'prod' in airflow.instances"]


def test_the_committed_schema_is_the_generated_one() -> None:
    committed = (Path(__file__).parents[2] / "docs" / "config.schema.json").read_text(encoding="utf-8")
    assert committed == config_schema_text(), (
        "docs/config.schema.json is stale; regenerate it with: "
        ".venv/bin/fluxback config-schema > docs/config.schema.json"
    )


def test_the_schema_describes_every_key_with_its_default() -> None:
    schema = config_schema()
    assert set(schema["properties"]) == {
        "cluster", "listen", "journal", "journal_password_file", "journal_timeout_seconds", "webhook",
        "admin_tokens", "git",
        "airflow", "policy", "rules", "worker", "retention", "log", "kubernetes",
    }  # fmt: skip
    webhook = schema["$defs"]["WebhookConfig"]["properties"]
    assert webhook["max_body_bytes"] == {
        "default": 1048576,
        "description": (
            "Largest accepted body in bytes; Flux's own receiver caps at 3 MiB, events are far smaller."
        ),
        "exclusiveMinimum": 0,
        "title": "Max Body Bytes",
        "type": "integer",
    }
    assert schema["properties"]["journal"]["default"] == "sqlite:///var/lib/fluxback/journal.db"
    assert schema["additionalProperties"] is False
    for name, section in schema["$defs"].items():
        for key, field in section["properties"].items():
            assert field.get("description"), f"{name}.{key} has no description"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///var/lib/fluxback/journal.db", Path("/var/lib/fluxback/journal.db")),
        ("sqlite:///./var/journal.db", Path("var/journal.db")),
        ("sqlite:///../journal.db", Path("../journal.db")),
    ],
)
def test_sqlite_journal_urls(url: str, path: Path) -> None:
    parsed = parse_journal_url(url)
    assert (parsed.scheme, parsed.path, str(parsed)) == ("sqlite", path, url)
    assert parse_config({"journal": url}, environ={}).sqlite_path == path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "mysql://db/fluxback",
            "journal: must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB, got a 'mysql' URL",
        ),
        ("sqlite:///", "journal: must be sqlite:///PATH, got 'sqlite:///'"),
        ("sqlite://relative.db", "journal: must be sqlite:///PATH, got 'sqlite://relative.db'"),
        ("journal.db", "journal: must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB"),
    ],
)
def test_unsupported_journal_urls(url: str, message: str) -> None:
    assert _errors({"journal": url}) == [message]


def test_relations_are_checked_even_when_other_values_are_wrong() -> None:
    raw = {
        "listen": "nowhere",
        "git": {
            "repositories": [
                {"name": "flux-system/fleet", "url": "https://git.example.com/fleet.git", "username": []},
                {"name": "flux-system/fleet", "url": "https://git.example.com/other.git"},
                {"url": "https://git.example.com/third.git"},
            ],
            "objects": [
                {"kind": "Kustomization", "namespace": "apps", "name": "apps", "repository": "team/missing"},
            ],
        },
        "airflow": {
            "instances": {
                "default": {"url": "http://airflow:8080", "token_file": "/t", "timeout_seconds": 0},
                "other": {"url": "http://other:8080", "username_file": "/u"},
            },
        },
        "rules": [{"match": {"outcome": "done"}, "trigger": [{"dag_id": "post", "instance": "nowhere"}]}],
    }
    assert _errors(raw) == [
        "listen: must be host:port, got 'nowhere'",
        "git.repositories[0].username: must be a string, got list",
        "git.repositories[2].name: is required",
        "airflow.instances.default.timeout_seconds: must be a positive number, got 0",
        "airflow.instances.other: username_file and password_file go together",
        "airflow.instances.other: set either username_file + password_file, or token_file",
        "rules[0].match.outcome: must be one of 'success', 'failure', 'progress', 'ignore' or '*',"
        " got 'done'",
        "git.repositories[1].name: repository 'flux-system/fleet' is listed more than once",
        "git.objects[0].repository: no repository named 'team/missing' in git.repositories",
        "rules[0].trigger[0].instance: no Airflow instance 'nowhere' in airflow.instances",
    ]


def test_null_means_the_default_and_the_models_are_frozen() -> None:
    raw = {"webhook": None, "worker": {"concurrency": None}, "log": {"level": None}}
    config = parse_config(raw, environ={})
    assert config.worker.concurrency == 4
    assert config.log.level == "info"
    with pytest.raises(ValidationError):
        config.worker.concurrency = 8  # type: ignore[misc]


def test_booleans_and_numbers_keep_their_yaml_types() -> None:
    assert _errors({"webhook": {"allow_unauthenticated": "yes", "max_body_bytes": True}}) == [
        "webhook.allow_unauthenticated: must be true or false, got 'yes'",
        "webhook.max_body_bytes: must be a positive integer, got True",
    ]
    assert _errors({"worker": {"concurrency": 2.5}}) == [
        "worker.concurrency: must be a positive integer, got 2.5"
    ]


def test_ssh_urls_may_name_the_ssh_user_but_no_password() -> None:
    ok = {"name": "flux-system/fleet", "url": "ssh://git@github.com/acme/fleet.git", "ssh_key_file": "/k"}
    assert parse_config({"git": {"repositories": [ok]}}, environ={}).git.repositories[0].url == ok["url"]
    with_password = {**ok, "url": "ssh://git:pw@github.com/acme/fleet.git"}
    assert _errors({"git": {"repositories": [with_password]}}) == [
        "git.repositories[0].url: must not carry a user or password; use token_file or the *_file keys"
    ]


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


def test_a_repository_url_may_come_from_the_cluster() -> None:
    credentials_only = {"git": {"repositories": [{"name": "flux-system/fleet", "token_file": "/t"}]}}
    assert _errors(credentials_only) == ["git.repositories[0].url: is required (unless kubernetes.enabled)"]
    config = parse_config({**credentials_only, "kubernetes": {"enabled": True}}, environ={})
    assert config.git.repositories[0].url == ""


def test_front_door_settings() -> None:
    config = parse_config(
        {
            "journal_timeout_seconds": 2,
            "webhook": {"allow_unauthenticated": True, "header_timeout_seconds": 1.5, "max_connections": 64},
        },
        environ={"FLUXBACK_WEBHOOK__MAX_CONNECTIONS": "32"},
    )
    assert config.journal_timeout_seconds == 2.0
    assert (config.webhook.header_timeout_seconds, config.webhook.max_connections) == (1.5, 32)
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"journal_timeout_seconds": 0, "webhook": {"header_timeout_seconds": -1, "max_connections": "x"}},
            environ={},
        )
    assert sorted(e.split(":")[0] for e in caught.value.errors) == [
        "journal_timeout_seconds",
        "webhook.header_timeout_seconds",
        "webhook.max_connections",
    ]


def test_a_postgresql_journal_takes_its_password_from_a_file_only(tmp_path: Path) -> None:
    url = "postgresql://fluxback@db.example:5432/fluxback?sslmode=require"
    config = parse_config({"journal": url, "journal_password_file": str(tmp_path / "pw")}, environ={})
    assert (str(config.journal), config.journal.scheme, config.sqlite_path) == (url, "postgresql", None)
    assert config.journal_password_file == tmp_path / "pw"
    assert f"journal_password_file: cannot read file {tmp_path / 'pw'}" in startup_problems(config)
    for inline in ("postgresql://fluxback:s3cret@db/fluxback", "postgres://db/fluxback?password=s3cret"):
        (error,) = _errors({"journal": inline})
        assert error.startswith("journal: must not carry a password; use journal_password_file")
        assert "s3cret" not in error
