"""The text side of a YAML edit: change only the bytes of one value, or insert new block lines.

PyYAML parses the file into nodes that know where they start and end, so a scalar
is replaced by rewriting exactly its bytes, and a new key or list item becomes new
lines after the last line of the enclosing block, indented like its neighbours.
Everything else, comments and layout included, is left as it was. Whether the
result means what was asked is checked by `receiver.dags.yaml_edit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

Scalar = str | int | float | bool | None
YamlPath = str | Sequence[str | int]
"""`"spec.values.image.tag"`, `"spec.containers[0].image"`, or a list of keys and indexes."""

_NO_WRAP = 1_000_000
_QUOTED_STYLES = ("'", '"')


class YamlEditError(ValueError):
    """The file cannot be edited as asked; the message names the file, the path and why."""


class TextEdit:
    """The file's text and the node tree of one of its documents, parsed again after every change."""

    def __init__(self, file: Path, text: str, document: int) -> None:
        self.file = file
        self.document = document
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self._apply(text)

    def _apply(self, text: str) -> None:
        self.text = text
        self.root: yaml.Node | None = list(yaml.compose_all(text, Loader=yaml.SafeLoader))[self.document]

    def lookup(self, parts: Sequence[str | int]) -> yaml.Node | None:
        """The node at `parts`, None when a mapping key on the way is missing."""
        node = self.root
        for part in parts:
            step = self._step(node, part, parts)
            if step is None:
                return None
            node = step[1]
        return node

    def set(self, parts: Sequence[str | int], value: Any) -> None:
        """Set `value` at `parts`: replace a scalar in place, or write the missing keys as new lines."""
        node, key_column = self.root, -1
        for depth, part in enumerate(parts):
            if node is not None and _is_empty(node) and key_column >= 0:
                self._replace_empty(node, key_column, _nest(parts[depth:], value))
                return
            step = self._step(node, part, parts)
            if step is None:
                self._add_key(node, parts[depth:], value, parts[:depth])
                return
            key, node = step
            key_column = -1 if key is None else key.start_mark.column
        if not isinstance(value, dict | list):
            self._replace_scalar(node, value, parts)
        elif node is not None and _is_empty(node) and key_column >= 0:
            self._replace_empty(node, key_column, value)
        else:
            raise self._error(parts, f"holds {_kind(node)}, expected a list or nothing")

    def append(self, parts: Sequence[str | int], item: Any) -> None:
        """Add `item` after the last entry of the non-empty list at `parts`."""
        sequence = self.lookup(parts)
        assert isinstance(sequence, yaml.SequenceNode) and sequence.value
        if sequence.flow_style:
            raise self._error(parts, "is a flow list ([...]); items are only added to block lists")
        dash = self.text.rindex("-", 0, sequence.value[0].start_mark.index)
        column = dash - (self.text.rfind("\n", 0, dash) + 1)
        self._insert_lines(_last_end(sequence), column, [item])

    def _step(
        self, node: yaml.Node | None, part: str | int, parts: Sequence[str | int]
    ) -> tuple[yaml.Node | None, yaml.Node] | None:
        """The (key node or None for a list item, value node) at `part` of `node`; None for a missing key."""
        if isinstance(node, yaml.MappingNode):
            entry = mapping_entry(node, str(part))
            if entry is not None and entry[1].start_mark.index < entry[0].end_mark.index:
                raise self._error(
                    parts, f"goes through an alias at {part!r}; edit the anchored value instead"
                )
            return entry
        if isinstance(node, yaml.SequenceNode):
            index = part if isinstance(part, int) else int(part) if part.isdigit() else None
            if index is None or index >= len(node.value):
                raise self._error(parts, f"has no list item {part!r} (the list has {len(node.value)})")
            item: yaml.Node = node.value[index]
            return None, item
        raise self._error(parts, f"cannot go into {part!r}: the value there is {_kind(node)}")

    def _replace_scalar(self, node: yaml.Node | None, value: Scalar, parts: Sequence[str | int]) -> None:
        if not isinstance(node, yaml.ScalarNode):
            raise self._error(parts, f"holds {_kind(node)}; only scalar values are replaced")
        if node.style in ("|", ">"):
            raise self._error(parts, "holds a block scalar (| or >), which is not rewritten in place")
        start, end = node.start_mark.index, node.end_mark.index
        old = self.text[start:end]
        if old[:1] in ("&", "!", "*"):
            raise self._error(parts, "holds an anchored or tagged value; edit it by hand")
        current = yaml.safe_load(old)
        if type(current) is type(value) and current == value:
            return
        style = node.style if node.style in _QUOTED_STYLES and isinstance(value, str) else None
        if style is None and isinstance(value, str) and self._in_flow(node):
            style = '"'
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            raise self._error(parts, "cannot be set to a value with line breaks")
        new = _scalar_text(value, style)
        self._apply(self.text[:start] + ("" if old else " ") + new + self.text[end:])

    def _add_key(
        self, mapping: yaml.Node | None, parts: Sequence[str | int], value: Any, at: Sequence[str | int]
    ) -> None:
        if not isinstance(mapping, yaml.MappingNode):
            raise self._error(at, f"is {_kind(mapping)}, so key {parts[0]!r} cannot be added")
        if not mapping.value:
            raise self._error(
                at, "is an empty mapping at the top of the document; write its first key by hand"
            )
        if mapping.flow_style:
            raise self._error(at, "is a flow mapping ({...}); keys are only added to block mappings")
        self._insert_lines(_last_end(mapping), mapping.value[0][0].start_mark.column, _nest(parts, value))

    def _replace_empty(self, node: yaml.Node, key_column: int, value: Any) -> None:
        """Write a block value where a key has a null value or an empty `{}`/`[]`."""
        column = key_column if isinstance(value, list) else key_column + 2
        block = _block(value, column, self.newline).rstrip("\r\n")
        start, end = node.start_mark.index, node.end_mark.index
        self._apply(self.text[:start].rstrip(" ") + self.newline + block + self.text[end:])

    def _insert_lines(self, after: int, column: int, value: Any) -> None:
        """Insert `value` as block lines at `column`, after the line on which offset `after` lies."""
        text = self.text
        if after == 0 or text[after - 1] != "\n":
            line_end = text.find("\n", after)
            if line_end < 0:
                text += self.newline
                after = len(text)
            else:
                after = line_end + 1
        self._apply(text[:after] + _block(value, column, self.newline) + text[after:])

    def _in_flow(self, target: yaml.Node) -> bool:
        """Whether `target` sits inside a flow collection, where plain scalars end at `,` `]` `}`."""

        def walk(node: yaml.Node | None, flow: bool) -> bool | None:
            if node is target:
                return flow
            if isinstance(node, yaml.MappingNode):
                children = [value for _, value in node.value]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            else:
                return None
            inner = flow or bool(node.flow_style)
            return next((found for child in children if (found := walk(child, inner)) is not None), None)

        return bool(walk(self.root, False))

    def _error(self, parts: Sequence[str | int], problem: str) -> YamlEditError:
        return YamlEditError(f"{self.file}: {show_path(parts)} {problem}")


def mapping_entry(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The (key node, value node) pair for `key`; an alias's value node is the anchored node itself."""
    for key_node, value_node in mapping.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _last_end(node: yaml.Node) -> int:
    """Where the last value inside a block collection ends (a block's own end mark is at the next token)."""
    while isinstance(node, yaml.MappingNode | yaml.SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, yaml.MappingNode) else last
    end: int = node.end_mark.index
    return end


def _is_empty(node: yaml.Node) -> bool:
    """A null value (`key:`, `key: ~`) or an empty flow collection (`{}`, `[]`)."""
    if isinstance(node, yaml.CollectionNode):
        return bool(node.flow_style) and not node.value
    return bool(node.tag == "tag:yaml.org,2002:null")


def _scalar_text(value: Scalar, style: str | None) -> str:
    return _dump(value, default_style=style).removesuffix("\n...\n").removesuffix("\n")


def _block(value: Any, column: int, newline: str) -> str:
    text = _dump(value, default_flow_style=False, sort_keys=False)
    # Split on "\n" only: str.splitlines() would also split at U+0085 or U+2028 inside a value.
    return "".join(" " * column + line + newline for line in text.removesuffix("\n").split("\n"))


def _dump(value: Any, **options: Any) -> str:
    """YAML text for `value`, keeping non-ASCII text readable where PyYAML writes it correctly.

    PyYAML's emitter writes some line-break characters (U+0085, U+2028) raw inside quotes, where
    they read back as spaces; for such values everything non-ASCII is escaped instead.
    """
    text: str = yaml.safe_dump(value, width=_NO_WRAP, allow_unicode=True, **options)
    if yaml.safe_load(text) != value:
        text = yaml.safe_dump(value, width=_NO_WRAP, allow_unicode=False, **options)
    return text


def _nest(parts: Sequence[str | int], value: Any) -> Any:
    for part in reversed(parts):
        if isinstance(part, int):
            raise YamlEditError(f"list item [{part}] does not exist and is not created; add it by hand")
        value = {part: value}
    return value


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a scalar" if isinstance(node, yaml.ScalarNode) else "an empty document"


def show_path(path: YamlPath) -> str:
    if isinstance(path, str):
        return f"path {path!r}"
    return "path " + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
