"""The value types settings are declared with, each checked the same way wherever it is used.

Messages keep the wording operators already know (`must be a positive integer, got 'lots'`);
the loader prefixes them with the key path. YAML gives ints, floats and bools directly, so
numbers and flags are not parsed from strings: `max_body_bytes: "2048"` is refused as in
every earlier release (environment overrides are YAML too, so `=2048` is a number).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, Strict, WithJsonSchema


def _text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    return str(value)


def _number(allowed: tuple[type, ...], expected: str) -> Callable[[Any], Any]:
    """Accept only the `allowed` types, never a bool or a string (pydantic would parse `"2"`)."""

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ValueError(f"must be {expected}, got {value!r}")
        return value

    return check


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    text = _text(value)
    if not text:
        raise ValueError("must be a file path")
    return Path(text)


def _list_of_paths(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of file paths (secrets are never inline)")
    return value


def _one_or_many(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of strings")
    return value


def _without_credentials(url: str) -> str:
    # A name or token in the URL would reach logs and /deliveries; secrets live in files.
    # An SSH login name (ssh://git@host/...) is not a secret and is how SSH URLs are written.
    parts = urlsplit(url)
    if parts.password is not None or ("@" in parts.netloc and parts.scheme != "ssh"):
        raise ValueError("must not carry a user or password; use token_file or the *_file keys")
    return url


Text = Annotated[str, BeforeValidator(_text)]
"""A string; numbers are taken as their text (`name: 2024`), booleans are refused."""

RequiredText = Annotated[str, BeforeValidator(_text), Field(min_length=1)]
"""A string that must be present and not empty."""

PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_number((int,), "a positive integer"))]
PositiveNumber = Annotated[float, Field(gt=0), BeforeValidator(_number((int, float), "a positive number"))]
NonNegativeNumber = Annotated[float, Field(ge=0), BeforeValidator(_number((int, float), "a number >= 0"))]
Flag = Annotated[bool, Strict()]

FilePath = Annotated[Path, BeforeValidator(_path), WithJsonSchema({"type": "string", "minLength": 1})]
"""A file path, relative to the working directory unless absolute."""

SecretFile = Annotated[
    Path,
    BeforeValidator(_path),
    WithJsonSchema({"type": "string", "minLength": 1, "description": "Path to a file holding the secret."}),
]
"""The path of a file holding a secret; secrets are never written into the configuration."""

SecretFiles = Annotated[tuple[SecretFile, ...], BeforeValidator(_list_of_paths)]
"""Several secret files, e.g. the current and the next key during a rotation."""

Strings = Annotated[
    tuple[Text, ...],
    BeforeValidator(_one_or_many),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
"""One string or a list of them (`dags: deploy_*` is `dags: [deploy_*]`)."""

PlainUrl = Annotated[str, BeforeValidator(_text), AfterValidator(_without_credentials)]
"""A URL without a user or password in it."""

RequiredUrl = Annotated[PlainUrl, Field(min_length=1)]
