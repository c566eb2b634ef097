"""Change one value in a YAML manifest and leave every other byte of the file alone.

GitOps changes are reviewed as diffs, and manifests carry comments that people
rely on (`# renovate: ...`, `# {"$imagepolicy": ...}`). Loading a file with
PyYAML and dumping it again drops every comment and re-formats the whole file,
so these helpers edit the text instead (`receiver.dags.yaml_text`): only the bytes
of the target value change, or new lines are inserted for a new key or list item.
After each edit the file is parsed again and compared with the expected data; if
anything but the target changed, nothing is written.

Limits (each is an error that names the path, never a silent rewrite):
- the target of `set_yaml_value` must be a scalar (string, number, bool, null):
  plain or quoted, not a block scalar (`|`, `>`), not anchored, tagged or an alias;
- new keys go into block mappings, into an empty `{}`, or in place of a null value;
  a list index must exist; keys inside non-empty flow collections (`{a: 1}`) are not added;
- a key containing `.` needs the list form of the path (`["metadata", "annotations", "a.b/c"]`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from receiver.dags.yaml_text import Scalar, TextEdit, YamlEditError, YamlPath, mapping_entry, show_path

__all__ = ["Scalar", "YamlEditError", "YamlPath", "parse_path", "set_kustomization_image", "set_yaml_value"]

_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: YamlPath) -> list[str | int]:
    """`"a.b[0].c"` as `["a", "b", 0, "c"]`; a list is taken as it is.

    A numeric part written without brackets (`images.0.newTag`) stays a string and is used as a
    list index when it meets a list.
    """
    if not isinstance(path, str):
        return list(path)
    parts: list[str | int] = []
    for dotted in path.split("."):
        position = 0
        for match in _SEGMENT.finditer(dotted):
            if match.start() != position:
                break
            parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
            position = match.end()
        if not dotted or position != len(dotted):
            raise YamlEditError(f"cannot read path {path!r}: expected keys separated by '.' and [index]")
    return parts


def set_yaml_value(file: str | Path, path: YamlPath, value: Scalar, *, document: int = 0) -> bool:
    """Set the scalar at `path` in a YAML file, adding missing mapping keys; returns whether the file changed.

    Args:
        file: the YAML file (in a work tree).
        path: where, e.g. `"spec.values.image.tag"` for a HelmRelease.
        value: the new value; a string keeps the quotes the old value had, and is quoted
            when it would otherwise read back as another type (`"1.10"`, `"true"`).
        document: which `---`-separated document of the file (0 is the first).

    Raises:
        YamlEditError: the path cannot be set without rewriting more than the value.
    """
    if not isinstance(value, Scalar):
        raise YamlEditError(
            f"{file}: {show_path(path)}: only scalar values can be set, got {type(value).__name__}"
        )
    parts = parse_path(path)
    if not parts:
        raise YamlEditError(f"{file}: empty path")

    def expected(data: Any) -> None:
        _set_in_data(data, parts, value)

    return _edit_file(Path(file), document, expected, lambda edit: edit.set(parts, value))


def set_kustomization_image(
    file: str | Path,
    name: str,
    *,
    new_tag: str | None = None,
    new_name: str | None = None,
    digest: str | None = None,
) -> bool:
    """Set the `images:` entry for `name` in a kustomization.yaml (added if missing); True if changed.

    This is what `kustomize edit set image` does, without needing the kustomize binary on the
    Airflow worker, and keeping the file's comments and layout.

    Args:
        file: the `kustomization.yaml`.
        name: the image name as written in the manifests (`ghcr.io/acme/model`).
        new_tag: the `newTag` to set.
        new_name: the `newName` to set.
        digest: the `digest` to set (`sha256:...`).

    Raises:
        YamlEditError: nothing to set, or the file's `images` is not a list.
    """
    fields = {
        key: text for key, text in (("newName", new_name), ("newTag", new_tag), ("digest", digest)) if text
    }
    if not fields:
        raise YamlEditError(f"{file}: image {name!r}: give at least one of new_tag, new_name, digest")
    return _edit_file(
        Path(file),
        0,
        lambda data: _set_image_in_data(data, name, fields),
        lambda edit: _set_image(edit, name, fields),
    )


def _set_image_in_data(data: Any, name: str, fields: Mapping[str, str]) -> None:
    """What `_set_image` should have done, on the parsed data: the check that it touched nothing else."""
    if not isinstance(data.get("images"), list):
        data["images"] = []
    entry = next((i for i in data["images"] if isinstance(i, dict) and i.get("name") == name), None)
    if entry is None:
        data["images"].append({"name": name, **fields})
    else:
        entry.update(fields)


def _set_image(edit: TextEdit, name: str, fields: Mapping[str, str]) -> None:
    """Update the `images:` entry named `name` in place, or add one, as `kustomize edit set image` does."""
    images = edit.lookup(["images"])
    if not isinstance(images, yaml.SequenceNode) or not images.value:
        edit.set(["images"], [{"name": name, **fields}])
        return
    for index, item in enumerate(images.value):
        entry = mapping_entry(item, "name") if isinstance(item, yaml.MappingNode) else None
        if entry is not None and isinstance(entry[1], yaml.ScalarNode) and entry[1].value == name:
            for key, text in fields.items():
                edit.set(["images", index, key], text)
            return
    edit.append(["images"], {"name": name, **fields})


def _edit_file(
    file: Path, document: int, expected: Callable[[Any], None], change: Callable[[TextEdit], None]
) -> bool:
    """Make `change` and write it only if the file then reads as `expected` says: else it changed more."""
    try:
        with open(file, encoding="utf-8", newline="") as handle:
            text = handle.read()
    except OSError as error:
        raise YamlEditError(f"{file}: cannot read: {error.strerror}") from error
    try:
        before = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        raise YamlEditError(f"{file}: not valid YAML: {error}") from error
    if not 0 <= document < len(before):
        raise YamlEditError(f"{file}: has {len(before)} document(s), no document {document}")
    unhandled = YamlEditError(
        f"{file}: the edit would have changed more than the target (a YAML construct these"
        " helpers do not handle); the file was left unchanged"
    )
    edit = TextEdit(file, text, document)
    try:
        change(edit)
        after = list(yaml.safe_load_all(edit.text))
    except yaml.YAMLError as error:
        raise unhandled from error
    if edit.text == text:
        return False
    wanted = copy.deepcopy(before)
    expected(wanted[document])
    if after != wanted:
        raise unhandled
    with open(file, "w", encoding="utf-8", newline="") as handle:
        handle.write(edit.text)
    return True


def _set_in_data(data: Any, parts: Sequence[str | int], value: Any) -> None:
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(data, list):
            index = int(part)
            if last:
                data[index] = value
            data = data[index]
        elif isinstance(data, dict):
            key = str(part)
            if last:
                data[key] = value
            elif not isinstance(data.get(key), dict | list):
                data[key] = {}
            data = data[key]
