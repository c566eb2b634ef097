"""Typed settings from a YAML file plus `FLUXBACK_*` environment overrides.

The keys are a contract with deployments and the Helm chart (see DESIGN.md).
Loading collects *every* problem before failing, and each message names the
key (`webhook.max_body_bytes: must be a positive integer`), so an operator
fixes a broken file in one pass. Secrets are only ever paths to files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "FLUXBACK_"
CONFIG_ENV = "FLUXBACK_CONFIG"
OUTCOMES = ("success", "failure", "progress", "ignore", "*")
T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem as `key: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))
        self.errors = errors


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    hmac_keys: tuple[Path, ...] = ()
    """generic-hmac keys (files), several at once for rotation."""
    bearer_tokens: tuple[Path, ...] = ()
    """generic provider tokens (files), sent as `Authorization: Bearer`."""
    allow_unauthenticated: bool = False
    """Accept events without any signature or token; logged as a warning at start-up."""
    max_body_bytes: int = 1024 * 1024
    """Largest accepted body in bytes; Flux's own receiver caps at 3 MiB, events are far smaller."""
    read_timeout_seconds: float = 10.0
    """How long a client may take to send its body; Flux's whole delivery budget is 15 s."""
    max_clock_skew_seconds: float = 0.0
    """Refuse events whose timestamp is older than this (replay protection); 0 turns the check off."""


@dataclass(frozen=True, kw_only=True)
class GitRepository:
    name: str
    """The Flux GitRepository as `namespace/name`."""
    url: str = ""
    """Empty with kubernetes.enabled: the URL then comes from the Flux GitRepository's spec.url."""
    token_file: Path | None = None
    """HTTPS token (file); sent as the password with user `username`."""
    username: str = "git"
    ssh_key_file: Path | None = None
    ssh_known_hosts_file: Path | None = None
    allowed_signers_file: Path | None = None
    """When set, only commits signed by a key in this file (git's SSH allowed-signers format)
    may name Airflow runs; unsigned or otherwise signed commits are refused, visibly."""


@dataclass(frozen=True, kw_only=True)
class GitObject:
    kind: str
    namespace: str
    name: str
    repository: str
    path: str = ""
    """Directory in the repository the object applies; empty means the whole repository."""


@dataclass(frozen=True, kw_only=True)
class GitConfig:
    cache_dir: Path = Path("/var/cache/fluxback/git")
    repositories: tuple[GitRepository, ...] = ()
    objects: tuple[GitObject, ...] = ()
    fetch_timeout_seconds: float = 120.0


@dataclass(frozen=True, kw_only=True)
class AirflowInstance:
    url: str
    username_file: Path | None = None
    password_file: Path | None = None
    token_file: Path | None = None
    """A static API token (file), instead of username/password."""
    timeout_seconds: float = 10.0
    """Per request, connect and read together."""
    ca_file: Path | None = None
    """CA bundle for an HTTPS Airflow with a private CA."""


@dataclass(frozen=True, kw_only=True)
class AirflowConfig:
    instances: Mapping[str, AirflowInstance] = field(default_factory=dict)
    default_instance: str = "default"
    """Used when a commit has no `Airflow-Instance` trailer."""


@dataclass(frozen=True, kw_only=True)
class Match:
    """Which Flux events a policy entry or a rule applies to; strings are shell-style globs."""

    kind: str = "*"
    namespace: str = "*"
    name: str = "*"
    outcome: str = "*"
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Event metadata that must be present, e.g. `{cluster: prod-*}` set by the Alert's eventMetadata."""


@dataclass(frozen=True, kw_only=True)
class PolicyEntry:
    match: Match
    dags: tuple[str, ...]
    """DAG id globs that a commit trailer may name for the matching Flux objects."""
    instances: tuple[str, ...] = ("*",)


@dataclass(frozen=True, kw_only=True)
class TriggerSpec:
    dag_id: str
    instance: str = "default"


@dataclass(frozen=True, kw_only=True)
class Rule:
    match: Match
    assets: tuple[str, ...] = ()
    object_asset: bool = False
    """Also emit to the Flux object's own asset URI (receiver.assets.flux_object_uri)."""
    asset_instance: str = "default"
    trigger: tuple[TriggerSpec, ...] = ()


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    concurrency: int = 4
    """Flux objects processed at the same time; events of one object are always sequential."""
    poll_interval_seconds: float = 1.0
    """How often the worker looks for due work when nothing woke it."""
    retry_initial_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    max_attempts: int = 12
    max_age_seconds: float = 24 * 3600.0
    """After this long since receipt, a delivery that still fails temporarily is dead-lettered."""


@dataclass(frozen=True, kw_only=True)
class RetentionConfig:
    max_age_days: float = 30.0
    """Journal entries older than this are pruned (pending ones are kept)."""
    interval_seconds: float = 3600.0


@dataclass(frozen=True, kw_only=True)
class KubernetesConfig:
    """Reading Flux's own status from the Kubernetes API (a second source of events) and
    recording Kubernetes Events on the Flux objects."""

    enabled: bool = False
    """True: in-cluster configuration (the pod's ServiceAccount), or `kubeconfig` when set."""
    kubeconfig: Path | None = None
    """A kubeconfig file, for running outside the cluster."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means every namespace the ServiceAccount can list."""
    resync_seconds: float = 300.0
    """Full re-list on top of the watches; a watch that cannot list for longer is not ready."""
    events: bool = True
    """Record Kubernetes Events (events.k8s.io/v1) on the Flux objects for actions and refusals."""


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    format: str = "auto"
    """`json`, `console`, or `auto` (console on a TTY, JSON otherwise)."""
    level: str = "info"


@dataclass(frozen=True, kw_only=True)
class Config:
    cluster: str = "default"
    """This cluster's name, for asset URIs when an event carries no `cluster` metadata."""
    listen_host: str = "127.0.0.1"
    listen_port: int = 9292
    journal: str = "sqlite:///var/lib/fluxback/journal.db"
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    admin_tokens: tuple[Path, ...] = ()
    git: GitConfig = field(default_factory=GitConfig)
    airflow: AirflowConfig = field(default_factory=AirflowConfig)
    policy: tuple[PolicyEntry, ...] = ()
    rules: tuple[Rule, ...] = ()
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    source: str = "<defaults>"
    """Where the configuration came from, for messages."""

    @property
    def sqlite_path(self) -> Path | None:
        """The journal file when the journal is SQLite, else None."""
        return sqlite_path(self.journal)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///...` URL: absolute (`sqlite:///var/lib/x.db` is /var/lib/x.db)
    unless it starts with `./` or `../` (`sqlite:///./var/x.db` is relative to the working folder)."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///")
    return Path(rest) if rest.startswith(("./", "../")) else Path("/" + rest)


class _Reader:
    """Walks the raw YAML tree, converting values and collecting errors by key."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._path: list[str] = []

    @contextmanager
    def at(self, key: str | int) -> Iterator[None]:
        self._path.append(f"[{key}]" if isinstance(key, int) else key)
        try:
            yield
        finally:
            self._path.pop()

    def key(self, name: str | None = None) -> str:
        parts = [*self._path, name] if name is not None else list(self._path)
        text = ""
        for part in parts:
            text += part if part.startswith("[") or not text else "." + part
        return text or "<top level>"

    def error(self, name: str | None, message: str) -> None:
        self.errors.append(f"{self.key(name)}: {message}")

    def section(self, raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = raw.get(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(name, "must be a mapping")
            return {}
        return value

    def unknown_keys(self, raw: Mapping[str, Any], known: set[str]) -> None:
        for name in raw:
            if name not in known:
                self.error(str(name), f"unknown key (known keys: {', '.join(sorted(known))})")

    def get(self, raw: Mapping[str, Any], name: str, convert: Callable[[Any], T], default: T) -> T:
        if name not in raw or raw[name] is None:
            return default
        try:
            return convert(raw[name])
        except (TypeError, ValueError) as problem:
            self.error(name, str(problem))
            return default

    def required(self, raw: Mapping[str, Any], name: str, convert: Callable[[Any], T], default: T) -> T:
        if name not in raw or raw[name] in (None, ""):
            self.error(name, "is required")
            return default
        return self.get(raw, name, convert, default)

    def items(self, raw: Mapping[str, Any], name: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
        value = raw.get(name)
        if value is None:
            return
        if not isinstance(value, list):
            self.error(name, "must be a list")
            return
        with self.at(name):
            for index, item in enumerate(value):
                with self.at(index):
                    if not isinstance(item, Mapping):
                        self.error(None, "must be a mapping")
                        continue
                    yield index, item


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    return str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, got {value!r}")


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return value


def _positive_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    return float(value)


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"must be a number >= 0, got {value!r}")
    return float(value)


def _path(value: Any) -> Path:
    text = _text(value)
    if not text:
        raise ValueError("must be a file path")
    return Path(text)


def _paths(value: Any) -> tuple[Path, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of file paths (secrets are never inline)")
    return tuple(_path(item) for item in value)


def _texts(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise ValueError("must be a list of strings")
    return tuple(_text(item) for item in value)


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of strings")
    return {_text(k): _text(v) for k, v in value.items()}


def _listen(value: Any) -> tuple[str, int]:
    text = _text(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":9292" means every interface


def _journal(value: Any) -> str:
    text = _text(value)
    if text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return text
    if text.startswith(("postgresql://", "postgres://")):
        raise ValueError("the PostgreSQL journal is not available in this release; use sqlite:///PATH")
    raise ValueError(f"must be sqlite:///PATH, got a {text.split('://')[0]!r} URL")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _text(value)
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    return convert


def _read_match(reader: _Reader, raw: Mapping[str, Any]) -> Match:
    match = reader.section(raw, "match")
    with reader.at("match"):
        reader.unknown_keys(match, {"kind", "namespace", "name", "outcome", "metadata"})
        return Match(
            kind=reader.get(match, "kind", _text, "*"),
            namespace=reader.get(match, "namespace", _text, "*"),
            name=reader.get(match, "name", _text, "*"),
            outcome=reader.get(match, "outcome", _choice(*OUTCOMES), "*"),
            metadata=reader.get(match, "metadata", _string_map, {}),
        )


def _read_webhook(reader: _Reader, raw: Mapping[str, Any]) -> WebhookConfig:
    section = reader.section(raw, "webhook")
    defaults = WebhookConfig()
    with reader.at("webhook"):
        reader.unknown_keys(section, set(WebhookConfig.__dataclass_fields__))
        return WebhookConfig(
            hmac_keys=reader.get(section, "hmac_keys", _paths, ()),
            bearer_tokens=reader.get(section, "bearer_tokens", _paths, ()),
            allow_unauthenticated=reader.get(section, "allow_unauthenticated", _bool, False),
            max_body_bytes=reader.get(section, "max_body_bytes", _positive_int, defaults.max_body_bytes),
            read_timeout_seconds=reader.get(
                section, "read_timeout_seconds", _positive_float, defaults.read_timeout_seconds
            ),
            max_clock_skew_seconds=reader.get(
                section, "max_clock_skew_seconds", _non_negative_float, defaults.max_clock_skew_seconds
            ),
        )


def _read_git(reader: _Reader, raw: Mapping[str, Any]) -> GitConfig:
    section = reader.section(raw, "git")
    defaults = GitConfig()
    repositories: list[GitRepository] = []
    objects: list[GitObject] = []
    with reader.at("git"):
        reader.unknown_keys(section, {"cache_dir", "repositories", "objects", "fetch_timeout_seconds"})
        for _, item in reader.items(section, "repositories"):
            reader.unknown_keys(item, set(GitRepository.__dataclass_fields__))
            repository = GitRepository(
                name=reader.required(item, "name", _text, ""),
                url=reader.get(item, "url", _text, ""),
                token_file=reader.get(item, "token_file", _path, None),
                username=reader.get(item, "username", _text, "git"),
                ssh_key_file=reader.get(item, "ssh_key_file", _path, None),
                ssh_known_hosts_file=reader.get(item, "ssh_known_hosts_file", _path, None),
                allowed_signers_file=reader.get(item, "allowed_signers_file", _path, None),
            )
            if repository.name and repository.name.count("/") != 1:
                reader.error("name", "must be namespace/name of the Flux GitRepository")
            if repository.token_file and repository.ssh_key_file:
                reader.error(None, "set token_file or ssh_key_file, not both")
            repositories.append(repository)
        names = [r.name for r in repositories]
        for name in {n for n in names if names.count(n) > 1}:
            reader.error("repositories", f"repository {name!r} is listed more than once")
        for _, item in reader.items(section, "objects"):
            reader.unknown_keys(item, set(GitObject.__dataclass_fields__))
            obj = GitObject(
                kind=reader.required(item, "kind", _text, ""),
                namespace=reader.required(item, "namespace", _text, ""),
                name=reader.required(item, "name", _text, ""),
                repository=reader.required(item, "repository", _text, ""),
                path=reader.get(item, "path", _text, ""),
            )
            if obj.repository and obj.repository not in names:
                reader.error("repository", f"no repository named {obj.repository!r} in git.repositories")
            objects.append(obj)
        return GitConfig(
            cache_dir=reader.get(section, "cache_dir", _path, defaults.cache_dir),
            repositories=tuple(repositories),
            objects=tuple(objects),
            fetch_timeout_seconds=reader.get(
                section, "fetch_timeout_seconds", _positive_float, defaults.fetch_timeout_seconds
            ),
        )


def _read_airflow(reader: _Reader, raw: Mapping[str, Any]) -> AirflowConfig:
    section = reader.section(raw, "airflow")
    instances: dict[str, AirflowInstance] = {}
    with reader.at("airflow"):
        reader.unknown_keys(section, {"instances", "default_instance"})
        raw_instances = reader.section(section, "instances")
        with reader.at("instances"):
            for name, item in raw_instances.items():
                with reader.at(str(name)):
                    if not isinstance(item, Mapping):
                        reader.error(None, "must be a mapping")
                        continue
                    reader.unknown_keys(item, set(AirflowInstance.__dataclass_fields__))
                    instance = AirflowInstance(
                        url=reader.required(item, "url", _text, ""),
                        username_file=reader.get(item, "username_file", _path, None),
                        password_file=reader.get(item, "password_file", _path, None),
                        token_file=reader.get(item, "token_file", _path, None),
                        timeout_seconds=reader.get(item, "timeout_seconds", _positive_float, 10.0),
                        ca_file=reader.get(item, "ca_file", _path, None),
                    )
                    if instance.url and not instance.url.startswith(("http://", "https://")):
                        reader.error("url", "must start with http:// or https://")
                    has_login = instance.username_file is not None and instance.password_file is not None
                    if (instance.username_file is None) != (instance.password_file is None):
                        reader.error(None, "username_file and password_file go together")
                    if has_login == (instance.token_file is not None):
                        reader.error(None, "set either username_file + password_file, or token_file")
                    instances[str(name)] = instance
        return AirflowConfig(
            instances=instances,
            default_instance=reader.get(section, "default_instance", _text, "default"),
        )


def _read_policy(reader: _Reader, raw: Mapping[str, Any]) -> tuple[PolicyEntry, ...]:
    entries: list[PolicyEntry] = []
    for _, item in reader.items(raw, "policy"):
        reader.unknown_keys(item, {"match", "dags", "instances"})
        entries.append(
            PolicyEntry(
                match=_read_match(reader, item),
                dags=reader.required(item, "dags", _texts, ()),
                instances=reader.get(item, "instances", _texts, ("*",)),
            )
        )
    return tuple(entries)


def _read_rules(reader: _Reader, raw: Mapping[str, Any]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for _, item in reader.items(raw, "rules"):
        reader.unknown_keys(item, {"match", "assets", "object_asset", "asset_instance", "trigger"})
        triggers: list[TriggerSpec] = []
        for _, trigger in reader.items(item, "trigger"):
            reader.unknown_keys(trigger, {"dag_id", "instance"})
            triggers.append(
                TriggerSpec(
                    dag_id=reader.required(trigger, "dag_id", _text, ""),
                    instance=reader.get(trigger, "instance", _text, "default"),
                )
            )
        rule = Rule(
            match=_read_match(reader, item),
            assets=reader.get(item, "assets", _texts, ()),
            object_asset=reader.get(item, "object_asset", _bool, False),
            asset_instance=reader.get(item, "asset_instance", _text, "default"),
            trigger=tuple(triggers),
        )
        if not rule.assets and not rule.object_asset and not rule.trigger:
            reader.error(None, "a rule needs assets, object_asset or trigger")
        rules.append(rule)
    return tuple(rules)


def _read_worker(reader: _Reader, raw: Mapping[str, Any]) -> WorkerConfig:
    section = reader.section(raw, "worker")
    d = WorkerConfig()
    with reader.at("worker"):
        reader.unknown_keys(section, set(WorkerConfig.__dataclass_fields__))
        return WorkerConfig(
            concurrency=reader.get(section, "concurrency", _positive_int, d.concurrency),
            poll_interval_seconds=reader.get(
                section, "poll_interval_seconds", _positive_float, d.poll_interval_seconds
            ),
            retry_initial_seconds=reader.get(
                section, "retry_initial_seconds", _positive_float, d.retry_initial_seconds
            ),
            retry_max_seconds=reader.get(section, "retry_max_seconds", _positive_float, d.retry_max_seconds),
            max_attempts=reader.get(section, "max_attempts", _positive_int, d.max_attempts),
            max_age_seconds=reader.get(section, "max_age_seconds", _positive_float, d.max_age_seconds),
        )


def _read_retention(reader: _Reader, raw: Mapping[str, Any]) -> RetentionConfig:
    section = reader.section(raw, "retention")
    d = RetentionConfig()
    with reader.at("retention"):
        reader.unknown_keys(section, set(RetentionConfig.__dataclass_fields__))
        return RetentionConfig(
            max_age_days=reader.get(section, "max_age_days", _positive_float, d.max_age_days),
            interval_seconds=reader.get(section, "interval_seconds", _positive_float, d.interval_seconds),
        )


def _read_kubernetes(reader: _Reader, raw: Mapping[str, Any]) -> KubernetesConfig:
    section = reader.section(raw, "kubernetes")
    d = KubernetesConfig()
    with reader.at("kubernetes"):
        reader.unknown_keys(section, set(KubernetesConfig.__dataclass_fields__))
        return KubernetesConfig(
            enabled=reader.get(section, "enabled", _bool, d.enabled),
            kubeconfig=reader.get(section, "kubeconfig", _path, d.kubeconfig),
            namespaces=reader.get(section, "namespaces", _texts, d.namespaces),
            resync_seconds=reader.get(section, "resync_seconds", _positive_float, d.resync_seconds),
            events=reader.get(section, "events", _bool, d.events),
        )


def _read_log(reader: _Reader, raw: Mapping[str, Any]) -> LogConfig:
    section = reader.section(raw, "log")
    with reader.at("log"):
        reader.unknown_keys(section, {"format", "level"})
        return LogConfig(
            format=reader.get(section, "format", _choice("auto", "json", "console"), "auto"),
            level=reader.get(section, "level", _choice("debug", "info", "warning", "error"), "info"),
        )


TOP_LEVEL_KEYS = {
    "cluster", "listen", "journal", "webhook", "admin_tokens", "git", "airflow",
    "policy", "rules", "worker", "retention", "log", "kubernetes",
}  # fmt: skip


def _cross_checks(reader: _Reader, config: Config) -> None:
    instances = config.airflow.instances
    if instances and config.airflow.default_instance not in instances:
        reader.error(
            "airflow.default_instance",
            f"no Airflow instance {config.airflow.default_instance!r} in airflow.instances",
        )
    for index, repository in enumerate(config.git.repositories):
        if not repository.url and not config.kubernetes.enabled:
            # With Kubernetes enabled, the Flux GitRepository of the same namespace/name names the URL.
            reader.error(f"git.repositories[{index}].url", "is required (unless kubernetes.enabled)")
    urls = [(f"git.repositories[{i}].url", r.url) for i, r in enumerate(config.git.repositories)]
    urls += [(f"airflow.instances.{name}.url", i.url) for name, i in instances.items()]
    for key, url in urls:
        if "@" in urlsplit(url).netloc:
            # A name or token in the URL would reach logs and /deliveries; secrets live in files.
            reader.error(key, "must not carry a user or password; use token_file or the *_file keys")
    for index, rule in enumerate(config.rules):
        for t_index, trigger in enumerate(rule.trigger):
            if instances and trigger.instance not in instances:
                reader.error(
                    f"rules[{index}].trigger[{t_index}].instance",
                    f"no Airflow instance {trigger.instance!r} in airflow.instances",
                )
        if (rule.assets or rule.object_asset) and instances and rule.asset_instance not in instances:
            reader.error(f"rules[{index}].asset_instance", f"no Airflow instance {rule.asset_instance!r}")


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str], errors: list[str]) -> None:
    """Apply `FLUXBACK_<SECTION>__<KEY>=value` onto the raw tree; values are YAML scalars or lists."""
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        parts = [p.lower() for p in name.removeprefix(ENV_PREFIX).split("__")]
        if parts[0] not in TOP_LEVEL_KEYS or not all(parts):
            errors.append(f"{name}: does not name a configuration key")
            continue
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value


def parse_config(raw: Any, source: str = "<memory>", environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from a raw YAML tree.

    Raises:
        ConfigError: with every problem found, each naming its key.
    """
    reader = _Reader()
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    apply_env_overrides(raw, environ if environ is not None else os.environ, reader.errors)
    reader.unknown_keys(raw, TOP_LEVEL_KEYS)
    host, port = reader.get(raw, "listen", _listen, ("127.0.0.1", 9292))
    config = Config(
        cluster=reader.get(raw, "cluster", _text, "default"),
        listen_host=host,
        listen_port=port,
        journal=reader.get(raw, "journal", _journal, Config.journal),
        webhook=_read_webhook(reader, raw),
        admin_tokens=reader.get(raw, "admin_tokens", _paths, ()),
        git=_read_git(reader, raw),
        airflow=_read_airflow(reader, raw),
        policy=_read_policy(reader, raw),
        rules=_read_rules(reader, raw),
        worker=_read_worker(reader, raw),
        retention=_read_retention(reader, raw),
        log=_read_log(reader, raw),
        kubernetes=_read_kubernetes(reader, raw),
        source=source,
    )
    _cross_checks(reader, config)
    if reader.errors:
        raise ConfigError(reader.errors)
    return config


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file at `path` (or `$FLUXBACK_CONFIG`), then apply environment overrides.

    Raises:
        ConfigError: the file cannot be read or parsed, or holds invalid values.
    """
    env = environ if environ is not None else os.environ
    location = path or env.get(CONFIG_ENV)
    if not location:
        return parse_config({}, "<defaults>", env)
    try:
        text = Path(location).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{location}: cannot read configuration file: {error.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{location}: not valid YAML: {error}"]) from None
    return parse_config(raw, str(location), env)


def startup_problems(config: Config) -> list[str]:
    """What stops the service from starting although the file parses: unreadable secret files, no auth."""
    problems: list[str] = []
    named: list[tuple[str, Path | None]] = []
    named += [(f"webhook.hmac_keys[{i}]", p) for i, p in enumerate(config.webhook.hmac_keys)]
    named += [(f"webhook.bearer_tokens[{i}]", p) for i, p in enumerate(config.webhook.bearer_tokens)]
    named += [(f"admin_tokens[{i}]", p) for i, p in enumerate(config.admin_tokens)]
    for i, repo in enumerate(config.git.repositories):
        named += [(f"git.repositories[{i}].token_file", repo.token_file)]
        named += [(f"git.repositories[{i}].ssh_key_file", repo.ssh_key_file)]
        named += [(f"git.repositories[{i}].allowed_signers_file", repo.allowed_signers_file)]
    if config.kubernetes.enabled:
        named.append(("kubernetes.kubeconfig", config.kubernetes.kubeconfig))
    for name, inst in config.airflow.instances.items():
        for attr in ("username_file", "password_file", "token_file", "ca_file"):
            named.append((f"airflow.instances.{name}.{attr}", getattr(inst, attr)))
    for key, file in named:
        if file is None:
            continue
        if not os.access(file, os.R_OK) or not file.is_file():
            problems.append(f"{key}: cannot read file {file}")
    if not config.webhook.allow_unauthenticated and not (
        config.webhook.hmac_keys or config.webhook.bearer_tokens
    ):
        problems.append("webhook: no hmac_keys and no bearer_tokens; set one, or allow_unauthenticated: true")
    return problems
