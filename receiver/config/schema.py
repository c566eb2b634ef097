"""The JSON Schema of the configuration file, generated from the declarations in models.py.

A copy is committed at docs/config.schema.json for editors and the Helm chart's values
schema; a test keeps it equal to `fluxback config-schema`.
"""

from __future__ import annotations

import json
from typing import Any

from receiver.config.models import Config


def config_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "Fluxback configuration",
        "description": "The YAML file given to `fluxback --config`; every key is optional.",
    }


def config_schema_text() -> str:
    """The schema as committed: sorted keys, two-space indent, a final newline."""
    return json.dumps(config_schema(), indent=2, sort_keys=True) + "\n"
