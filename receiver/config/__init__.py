"""Typed, immutable settings from a YAML file plus `FLUXBACK_*` environment overrides.

Each setting is declared once, in `models.py` (key, type, default, constraint, docstring);
`loading.py` reads a file and reports every problem by its key path; `files.py` checks the
files the settings name; `schema.py` renders the JSON Schema. Secrets are only ever paths.
"""

from receiver.config.files import secret_files, startup_problems
from receiver.config.journal_url import JournalUrl, parse_journal_url
from receiver.config.loading import (
    CONFIG_ENV,
    ConfigError,
    Reading,
    load_config,
    parse_config,
    read_config,
    read_config_file,
)
from receiver.config.models import (
    AirflowConfig,
    AirflowInstance,
    Config,
    GitConfig,
    GitObject,
    GitRepository,
    KubernetesConfig,
    LogConfig,
    Match,
    PolicyEntry,
    RetentionConfig,
    Rule,
    TriggerSpec,
    WebhookConfig,
    WorkerConfig,
)
from receiver.config.schema import config_schema, config_schema_text

__all__ = [
    "CONFIG_ENV",
    "AirflowConfig",
    "AirflowInstance",
    "Config",
    "ConfigError",
    "GitConfig",
    "GitObject",
    "GitRepository",
    "JournalUrl",
    "KubernetesConfig",
    "LogConfig",
    "Match",
    "PolicyEntry",
    "Reading",
    "RetentionConfig",
    "Rule",
    "TriggerSpec",
    "WebhookConfig",
    "WorkerConfig",
    "config_schema",
    "config_schema_text",
    "load_config",
    "parse_config",
    "parse_journal_url",
    "read_config",
    "read_config_file",
    "secret_files",
    "startup_problems",
]
