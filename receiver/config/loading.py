"""Reading the configuration: YAML file, `FLUXBACK_*` overrides, and every problem by its key.

Pydantic reports all type and constraint errors of a tree at once, but a section's relation
checks (and those of every section above it) only run once its fields are valid. So the
loader validates, drops each invalid value from its copy of the tree (a dropped key takes its
default, a list item or mapping entry that cannot stand without it is dropped whole), and
validates again, until the rest is valid. Every problem is thus reported in one pass, and
what is left is a best-effort `Config` on which `check-config` also runs its file checks.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from receiver.config.files import startup_problems
from receiver.config.models import Config

ENV_PREFIX = "FLUXBACK_"
CONFIG_ENV = "FLUXBACK_CONFIG"
_NOT_FILE_KEYS = {"source"}
TOP_LEVEL_KEYS = set(Config.model_fields) - _NOT_FILE_KEYS
Loc = tuple[str | int, ...]


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem as `key: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Reading:
    """What a configuration said: its problems and, unless it could not be read at all, the
    best-effort `Config` with every invalid value left out (for further checks, never to run)."""

    source: str
    errors: list[str]
    config: Config | None
    dropped: frozenset[str]
    """The keys whose values were left out of `config`."""

    def every_problem(self) -> list[str]:
        """The errors, then what the file checks find in the valid rest (not about a key already
        reported, or a section holding one: `webhook` has no keys if `webhook.hmac_keys` was bad)."""
        if self.config is None:
            return self.errors
        return self.errors + [p for p in startup_problems(self.config) if not self._about_dropped(p)]

    def _about_dropped(self, problem: str) -> bool:
        key = problem.split(":", 1)[0]
        return any(_within(key, k) or _within(k, key) for k in self.dropped)


def _within(key: str, section: str) -> bool:
    return key == section or key.startswith((section + ".", section + "["))


def key_path(loc: Sequence[str | int]) -> str:
    """`('rules', 0, 'trigger')` as `rules[0].trigger`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _field_type(node: Any, part: str | int) -> Any:
    """The declared type one step below `node` (a model, tuple or mapping type)."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        field = node.model_fields.get(str(part))
        return field.annotation if field else None
    args = [a for a in get_args(node) if a is not type(None) and a is not Ellipsis]
    origin = get_origin(node)
    if origin is tuple or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return _field_type(args[-1], part) if args else None
    return _field_type(args[0], part) if args and get_origin(node) is not None else None


def _model_at(loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The section model declared at `loc` (None when `loc` holds a plain value)."""
    node: Any = Config
    for part in loc:
        node = _field_type(node, part)
    while get_origin(node) is not None and not (isinstance(node, type) and issubclass(node, BaseModel)):
        args = [a for a in get_args(node) if isinstance(a, type) and issubclass(a, BaseModel)]
        node = args[0] if args else None
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _known_keys(loc: Loc) -> list[str]:
    model = _model_at(loc)
    return sorted(set(model.model_fields) - _NOT_FILE_KEYS) if model else []


def _message(error: ErrorDetails) -> str:
    """Pydantic's error in the words of this project's earlier messages."""
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "value_error":
        return str(ctx["error"])
    if kind in {"missing", "string_too_short"}:
        return "is required"
    if kind == "extra_forbidden":
        return f"unknown key (known keys: {', '.join(_known_keys(error['loc'][:-1]))})"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}, got {value!r}"
    if kind in {"greater_than", "greater_than_equal"}:
        bound = ctx.get("gt", ctx.get("ge"))
        what = "number" if isinstance(bound, float) else "integer"
        if kind == "greater_than" and bound == 0:
            return f"must be a positive {what}, got {value!r}"
        return f"must be a {what} {'>' if kind == 'greater_than' else '>='} {bound:g}, got {value!r}"
    if kind == "bool_type":
        return f"must be true or false, got {value!r}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return "must be a mapping"
    if kind in {"tuple_type", "list_type"}:
        return "must be a list"
    return error["msg"]


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


class _Tree:
    """A copy of the raw tree from which invalid values are dropped, remembering where each
    remaining list item was originally, so that later messages keep naming the file's keys."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.data = copy.deepcopy(raw)
        self._origins: dict[Loc, list[int]] = {}
        self.dropped: set[Loc] = set()
        self.whole: set[Loc] = set()
        """Dropped items and entries (not single values): checks above them saw less than was written."""

    def original(self, loc: Sequence[str | int]) -> Loc:
        out: list[str | int] = []
        for part in loc:
            origins = self._origins.get(tuple(out))
            out.append(origins[part] if isinstance(part, int) and origins else part)
        return tuple(out)

    def explained(self, where: Loc) -> bool:
        """Whether a problem at `where` only follows from what was dropped."""
        below = any(where[: len(d)] == d for d in self.dropped)
        return below or any(d[: len(where)] == where for d in self.whole)

    def drop(self, loc: Loc) -> bool:
        """Remove the value at `loc`, or the item holding it when it is gone already; False when
        nothing is left to remove (the problem is with the whole tree)."""
        climbed = False
        while loc:
            parent: Any = self.data
            for part in loc[:-1]:
                parent = _child(parent, part)
            last, where = loc[-1], self.original(loc)
            if isinstance(parent, dict) and last in parent:
                del parent[last]
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
                origins = self._origins.setdefault(where[:-1], list(range(len(parent))))
                del parent[last], origins[last]
            else:
                loc, climbed = loc[:-1], True
                continue
            self.dropped.add(where)
            if climbed or isinstance(last, int):
                self.whole.add(where)
            return True
        return False


def _validate(raw: dict[str, Any], source: str) -> tuple[Config | None, list[str], frozenset[str]]:
    tree = _Tree(raw)
    errors: list[str] = []
    while True:
        try:
            config = Config.model_validate({**tree.data, "source": source})
        except ValidationError as invalid:
            for error in invalid.errors(include_url=False):
                where = tree.original(error["loc"])
                if not tree.explained(where):
                    errors.append(f"{key_path(where)}: {_message(error)}")
            # Last first, so that dropping a list item does not move the ones still to drop.
            locs = dict.fromkeys(tuple(error["loc"]) for error in invalid.errors())
            if all(tree.drop(loc) for loc in reversed(locs)):
                continue
            config = None
        return config, errors, frozenset(key_path(loc) for loc in tree.dropped)


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


def read_config(raw: Any, source: str = "<memory>", environ: Mapping[str, str] | None = None) -> Reading:
    """Check a raw YAML tree with the environment overrides applied, collecting every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return Reading(source, [f"{source}: the top level must be a mapping"], None, frozenset())
    errors: list[str] = []
    apply_env_overrides(raw, environ if environ is not None else os.environ, errors)
    errors += [f"{key}: unknown key" for key in sorted(_NOT_FILE_KEYS & set(raw))]
    config, problems, dropped = _validate({k: v for k, v in raw.items() if k not in _NOT_FILE_KEYS}, source)
    return Reading(source, errors + problems, config, dropped)


def read_config_file(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Reading:
    """Read the YAML file at `path` (or `$FLUXBACK_CONFIG`; built-in defaults without either)."""
    env = environ if environ is not None else os.environ
    location = path or env.get(CONFIG_ENV)
    if not location:
        return read_config({}, "<defaults>", env)
    try:
        text = Path(location).read_text(encoding="utf-8")
    except OSError as error:
        problem = f"{location}: cannot read configuration file: {error.strerror}"
        return Reading(str(location), [problem], None, frozenset())
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return Reading(str(location), [f"{location}: not valid YAML: {error}"], None, frozenset())
    return read_config(raw, str(location), env)


def _valid(reading: Reading) -> Config:
    if reading.errors or reading.config is None:
        raise ConfigError(reading.errors)
    return reading.config


def parse_config(raw: Any, source: str = "<memory>", environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from a raw YAML tree.

    Raises:
        ConfigError: with every problem found, each naming its key.
    """
    return _valid(read_config(raw, source, environ))


def load_config(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the YAML file at `path` (or `$FLUXBACK_CONFIG`), then apply environment overrides.

    Raises:
        ConfigError: the file cannot be read or parsed, or holds invalid values.
    """
    return _valid(read_config_file(path, environ))
