"""Every setting, declared once: its key, type, default, constraint and (docstring) meaning.

The YAML keys are a contract with deployments and the Helm chart. To add a setting, add a
field to its section with a type from `receiver.config.types` (or a `Field` constraint), a
default, and a docstring (it becomes the JSON Schema description), then regenerate the
committed schema: `fluxback config-schema > docs/config.schema.json`.

Checks that relate several settings live in the section's `_relations` and name the exact key
they are about, so `check-config` can print `rules[0].trigger[1].instance: ...`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from receiver.config.journal_url import JournalUrl, parse_journal_url
from receiver.config.types import (
    FilePath,
    Flag,
    NonNegativeNumber,
    PlainUrl,
    PositiveInt,
    PositiveNumber,
    RequiredText,
    RequiredUrl,
    SecretFile,
    SecretFiles,
    Strings,
    Text,
)

Outcome = Literal["success", "failure", "progress", "ignore", "*"]
Loc = tuple[str | int, ...]


def relation_errors(title: str, problems: Iterable[tuple[Loc, str]]) -> None:
    """Raise one validation error per (key path relative to the section, message), if any."""
    details = [
        InitErrorDetails(type=PydanticCustomError("relation", message), loc=loc, input=None)
        for loc, message in problems
    ]
    if details:
        raise ValidationError.from_exception_data(title, details)


class Section(BaseModel):
    """Immutable; unknown keys are errors; `key: null` means the default, as in any YAML tool."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data


class WebhookConfig(Section):
    hmac_keys: SecretFiles = ()
    """generic-hmac keys (files), several at once for rotation."""
    bearer_tokens: SecretFiles = ()
    """generic provider tokens (files), sent as `Authorization: Bearer`."""
    allow_unauthenticated: Flag = False
    """Accept events without any signature or token; logged as a warning at start-up."""
    max_body_bytes: PositiveInt = 1024 * 1024
    """Largest accepted body in bytes; Flux's own receiver caps at 3 MiB, events are far smaller."""
    read_timeout_seconds: PositiveNumber = 10.0
    """How long a client may take to send its body; Flux's whole delivery budget is 15 s."""
    max_clock_skew_seconds: NonNegativeNumber = 0.0
    """Refuse events whose timestamp is older than this (replay protection); 0 turns the check off."""
    header_timeout_seconds: PositiveNumber = 5.0
    """How long a connection may take to send its request line and headers, and how long an
    idle keep-alive connection stays open; Flux sends its request at once."""
    max_connections: PositiveInt = 1000
    """Open connections at most (lowered to fit the file-descriptor limit); past it the oldest
    connections that handle no request are closed to make room."""


def _namespaced(name: str) -> str:
    if name.count("/") != 1:
        raise ValueError("must be namespace/name of the Flux GitRepository")
    return name


class GitRepository(Section):
    name: Annotated[RequiredText, AfterValidator(_namespaced)]
    """The Flux GitRepository as `namespace/name`."""
    url: PlainUrl = ""
    """Clone URL (https://, ssh:// or file://), without credentials. Empty with
    kubernetes.enabled: the URL then comes from the Flux GitRepository's spec.url."""
    token_file: SecretFile | None = None
    """HTTPS token (file); sent as the password with user `username`."""
    username: Text = "git"
    """User name sent with `token_file`."""
    ssh_key_file: SecretFile | None = None
    """SSH private key (file), instead of `token_file`."""
    ssh_known_hosts_file: FilePath | None = None
    """known_hosts for SSH URLs; the host key is checked strictly when set."""
    allowed_signers_file: FilePath | None = None
    """When set, only commits signed by a key in this file (git's SSH allowed-signers format)
    may name Airflow runs; unsigned or otherwise signed commits are refused, visibly."""

    @model_validator(mode="after")
    def _relations(self) -> Self:
        both = self.token_file is not None and self.ssh_key_file is not None
        relation_errors("GitRepository", [((), "set token_file or ssh_key_file, not both")] if both else [])
        return self


class GitObject(Section):
    kind: RequiredText
    """The Flux object's kind, e.g. `Kustomization`."""
    namespace: RequiredText
    """The Flux object's namespace."""
    name: RequiredText
    """The Flux object's name."""
    repository: RequiredText
    """The `git.repositories` entry (`namespace/name`) the object applies."""
    path: Text = ""
    """Directory in the repository the object applies; empty means the whole repository."""


class GitConfig(Section):
    cache_dir: FilePath = Path("/var/cache/fluxback/git")
    """Where repository mirrors are kept; survives restarts to save fetches."""
    repositories: tuple[GitRepository, ...] = ()
    """The repositories Flux applies, with the credentials to read them."""
    objects: tuple[GitObject, ...] = ()
    """Which repository and folder each Flux object applies."""
    fetch_timeout_seconds: PositiveNumber = 120.0
    """Deadline of one `git fetch`."""

    @model_validator(mode="after")
    def _relations(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        seen: set[str] = set()
        for index, repository in enumerate(self.repositories):
            if repository.name in seen:
                message = f"repository {repository.name!r} is listed more than once"
                problems.append((("repositories", index, "name"), message))
            seen.add(repository.name)
        for index, obj in enumerate(self.objects):
            if obj.repository not in seen:
                message = f"no repository named {obj.repository!r} in git.repositories"
                problems.append((("objects", index, "repository"), message))
        relation_errors("GitConfig", problems)
        return self


def _http(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return url


class AirflowInstance(Section):
    url: Annotated[RequiredUrl, AfterValidator(_http)]
    """Base URL of the Airflow API server, e.g. `https://airflow.example.com`."""
    username_file: SecretFile | None = None
    """User name (file) to obtain a token with; goes with `password_file`."""
    password_file: SecretFile | None = None
    """Password (file) to obtain a token with; goes with `username_file`."""
    token_file: SecretFile | None = None
    """A static API token (file), instead of username/password."""
    timeout_seconds: PositiveNumber = 10.0
    """Per request, connect and read together."""
    ca_file: FilePath | None = None
    """CA bundle for an HTTPS Airflow with a private CA."""

    @model_validator(mode="after")
    def _relations(self) -> Self:
        problems: list[tuple[Loc, str]] = []
        if (self.username_file is None) != (self.password_file is None):
            problems.append(((), "username_file and password_file go together"))
        has_login = self.username_file is not None and self.password_file is not None
        if has_login == (self.token_file is not None):
            problems.append(((), "set either username_file + password_file, or token_file"))
        relation_errors("AirflowInstance", problems)
        return self


class AirflowConfig(Section):
    instances: Mapping[str, AirflowInstance] = Field(default_factory=dict)
    """The Airflows Fluxback acts on, by the name commits use in `Airflow-Instance`."""
    default_instance: Text = "default"
    """Used when a commit has no `Airflow-Instance` trailer."""

    @model_validator(mode="after")
    def _relations(self) -> Self:
        unknown = self.instances and self.default_instance not in self.instances
        relation_errors(
            "AirflowConfig",
            [(("default_instance",), f"no Airflow instance {self.default_instance!r} in airflow.instances")]
            if unknown
            else [],
        )
        return self


class Match(Section):
    """Which Flux events a policy entry or a rule applies to; strings are shell-style globs."""

    kind: Text = "*"
    """Flux object kind glob."""
    namespace: Text = "*"
    """Flux object namespace glob."""
    name: Text = "*"
    """Flux object name glob."""
    outcome: Outcome = "*"
    """The event's outcome, or `*` for any."""
    metadata: Mapping[str, Text] = Field(default_factory=dict)
    """Event metadata that must be present, e.g. `{cluster: prod-*}` set by the Alert's eventMetadata."""


class PolicyEntry(Section):
    match: Match = Field(default_factory=Match)
    """The Flux objects this entry is about."""
    dags: Strings
    """DAG id globs that a commit trailer may name for the matching Flux objects."""
    instances: Strings = ("*",)
    """Airflow instance globs those trailers may name."""


class TriggerSpec(Section):
    dag_id: RequiredText
    """The DAG to run."""
    instance: Text = "default"
    """The Airflow instance to run it on."""


class Rule(Section):
    match: Match = Field(default_factory=Match)
    """The Flux events this rule is about."""
    assets: Strings = ()
    """Asset URIs to emit an asset event to."""
    object_asset: Flag = False
    """Also emit to the Flux object's own asset URI (receiver.assets.flux_object_uri)."""
    asset_instance: Text = "default"
    """The Airflow instance that receives the asset events."""
    trigger: tuple[TriggerSpec, ...] = ()
    """DAG runs to start."""

    @model_validator(mode="after")
    def _relations(self) -> Self:
        empty = not self.assets and not self.object_asset and not self.trigger
        relation_errors("Rule", [((), "a rule needs assets, object_asset or trigger")] if empty else [])
        return self


class WorkerConfig(Section):
    concurrency: PositiveInt = 4
    """Flux objects processed at the same time; events of one object are always sequential."""
    poll_interval_seconds: PositiveNumber = 1.0
    """How often the worker looks for due work when nothing woke it."""
    retry_initial_seconds: PositiveNumber = 5.0
    """First delay after a temporary failure; doubles with each attempt."""
    retry_max_seconds: PositiveNumber = 600.0
    """Longest delay between two attempts."""
    max_attempts: PositiveInt = 12
    """Attempts before a delivery is dead-lettered."""
    max_age_seconds: PositiveNumber = 24 * 3600.0
    """After this long since receipt, a delivery that still fails temporarily is dead-lettered."""


class RetentionConfig(Section):
    max_age_days: PositiveNumber = 30.0
    """Journal entries older than this are pruned (pending ones are kept)."""
    interval_seconds: PositiveNumber = 3600.0
    """How often pruning runs."""


class KubernetesConfig(Section):
    """Reading Flux's own status from the Kubernetes API (a second source of events) and
    recording Kubernetes Events on the Flux objects."""

    enabled: Flag = False
    """True: in-cluster configuration (the pod's ServiceAccount), or `kubeconfig` when set."""
    kubeconfig: FilePath | None = None
    """A kubeconfig file, for running outside the cluster."""
    namespaces: Strings = ()
    """Namespaces to watch; empty means every namespace the ServiceAccount can list."""
    resync_seconds: PositiveNumber = 300.0
    """Full re-list on top of the watches; a watch that cannot list for longer is not ready."""
    events: Flag = True
    """Record Kubernetes Events (events.k8s.io/v1) on the Flux objects for actions and refusals."""


class LogConfig(Section):
    format: Literal["auto", "json", "console"] = "auto"
    """`json`, `console`, or `auto` (console on a TTY, JSON otherwise)."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""


def split_listen(value: str) -> tuple[str, int]:
    """`host:port` as (host, port); an empty host (`:9292`) means every interface."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"must be host:port, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":9292" means every interface


def _listen(value: str) -> str:
    split_listen(value)
    return value


Listen = Annotated[Text, AfterValidator(_listen), Field(json_schema_extra={"pattern": ":[0-9]{1,5}$"})]

Journal = Annotated[
    JournalUrl,
    BeforeValidator(parse_journal_url),
    WithJsonSchema({"type": "string", "pattern": "^(sqlite:///.|postgres(ql)?://)"}),
]


class Config(Section):
    cluster: Text = "default"
    """This cluster's name, for asset URIs when an event carries no `cluster` metadata."""
    listen: Listen = "127.0.0.1:9292"
    """`host:port` the HTTP server binds; `:9292` or `0.0.0.0:9292` for every interface."""
    journal: Journal = Field("sqlite:///var/lib/fluxback/journal.db", validate_default=True)
    """Where events are stored durably: `sqlite:///ABSOLUTE/PATH` or `sqlite:///./RELATIVE/PATH` (one
    replica), or `postgresql://USER@HOST:PORT/DB` (several replicas; no password in the URL)."""
    journal_password_file: SecretFile | None = None
    """The PostgreSQL journal's password (file); without it libpq's service file or passfile apply."""
    journal_timeout_seconds: PositiveNumber = 3.0
    """Deadline on a journal append (then 503 + Retry-After) and on the probes' journal calls;
    well inside Flux's 15 s budget, so its next attempt still fits."""
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)
    """The endpoint Flux's notification-controller posts to."""
    admin_tokens: SecretFiles = ()
    """Bearer tokens (files) for the operator endpoints (`/deliveries`, replay)."""
    git: GitConfig = Field(default_factory=GitConfig)
    """The repositories Flux applies and which objects apply what."""
    airflow: AirflowConfig = Field(default_factory=AirflowConfig)
    """The Airflow instances Fluxback acts on."""
    policy: tuple[PolicyEntry, ...] = ()
    """Which Flux objects may name which DAGs in commit trailers (deny by default)."""
    rules: tuple[Rule, ...] = ()
    """Asset events and DAG runs for Flux events, configured rather than claimed in commits."""
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    """How deliveries are processed and retried."""
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    """How long the journal keeps finished entries."""
    log: LogConfig = Field(default_factory=LogConfig)
    """Log format and level."""
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    """Flux status from the Kubernetes API, and Kubernetes Events on the Flux objects."""
    source: SkipJsonSchema[str] = Field("<defaults>", exclude=True)
    """Where the configuration came from, for messages (not a key of the file)."""

    @property
    def listen_host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def sqlite_path(self) -> Path | None:
        """The journal file when the journal is SQLite, else None."""
        return self.journal.path

    @model_validator(mode="after")
    def _relations(self) -> Self:
        relation_errors("Config", [*self._missing_urls(), *self._unknown_instances()])
        return self

    def _missing_urls(self) -> Iterator[tuple[Loc, str]]:
        # With Kubernetes enabled, the Flux GitRepository of the same namespace/name names the URL.
        for index, repository in enumerate(() if self.kubernetes.enabled else self.git.repositories):
            if not repository.url:
                yield ("git", "repositories", index, "url"), "is required (unless kubernetes.enabled)"

    def _unknown_instances(self) -> Iterator[tuple[Loc, str]]:
        instances = self.airflow.instances
        for index, rule in enumerate(self.rules if instances else ()):
            for t_index, trigger in enumerate(rule.trigger):
                if trigger.instance not in instances:
                    where: Loc = ("rules", index, "trigger", t_index, "instance")
                    yield where, f"no Airflow instance {trigger.instance!r} in airflow.instances"
            if (rule.assets or rule.object_asset) and rule.asset_instance not in instances:
                yield ("rules", index, "asset_instance"), f"no Airflow instance {rule.asset_instance!r}"
