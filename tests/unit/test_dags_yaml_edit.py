"""YAML edits for DAG authors: only the target bytes change, comments and layout stay."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.dags import YamlEditError, set_kustomization_image, set_yaml_value
from receiver.dags.yaml_edit import Scalar, parse_path

HELM_RELEASE = """\
# The model server. Renovate and people both edit this file.
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: model   # keep in sync with the chart
  namespace: ml
spec:
  interval: 5m
  values:
    image:
      repository: ghcr.io/acme/model
      tag: "1.0.0"  # {"$imagepolicy": "flux-system:model:tag"}
    replicas: 2
    args: [--port, "8080"]
    extra:
  chart:
    spec:
      chart: model
---
apiVersion: v1
kind: ConfigMap
data:
  version: '1'
"""

KUSTOMIZATION = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml   # the model server
images:
  - name: ghcr.io/acme/model  # pinned by the deploy DAG
    newTag: 1.0.0
"""


def write(tmp_path: Path, text: str, name: str = "release.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_replacing_a_value_changes_only_its_bytes_and_keeps_its_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, HELM_RELEASE)

    assert set_yaml_value(path, "spec.values.image.tag", "1.1.0") is True

    assert path.read_text() == HELM_RELEASE.replace('tag: "1.0.0"', 'tag: "1.1.0"')


def test_setting_the_same_value_again_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, HELM_RELEASE)

    assert set_yaml_value(path, "spec.values.image.tag", "1.0.0") is False
    assert set_yaml_value(path, "spec.values.replicas", 2) is False
    assert path.read_text() == HELM_RELEASE


def test_types_are_kept_exact(tmp_path: Path) -> None:
    path = write(tmp_path, HELM_RELEASE)

    set_yaml_value(path, "spec.values.replicas", "2")  # a string now, so it must be quoted
    set_yaml_value(path, "spec.interval", "1.10")
    set_yaml_value(path, "metadata.namespace", True)

    data = next(yaml.safe_load_all(path.read_text()))
    assert data["spec"]["values"]["replicas"] == "2"
    assert data["spec"]["interval"] == "1.10"
    assert data["metadata"]["namespace"] is True
    assert "# keep in sync with the chart" in path.read_text()


def test_list_indexes_and_flow_lists(tmp_path: Path) -> None:
    path = write(tmp_path, HELM_RELEASE)

    set_yaml_value(path, "spec.values.args[1]", "9090")
    set_yaml_value(path, ["spec", "values", "args", 0], "--listen, all")

    assert '    args: ["--listen, all", "9090"]\n' in path.read_text()
    assert next(yaml.safe_load_all(path.read_text()))["spec"]["values"]["args"] == ["--listen, all", "9090"]


def test_missing_keys_are_added_as_lines_in_the_enclosing_block(tmp_path: Path) -> None:
    path = write(tmp_path, HELM_RELEASE)

    set_yaml_value(path, "spec.values.image.pullPolicy", "Always")
    set_yaml_value(path, "spec.values.resources.limits.cpu", "2")
    set_yaml_value(path, "spec.values.extra.enabled", True)

    text = path.read_text()
    assert (
        '      tag: "1.0.0"  # {"$imagepolicy": "flux-system:model:tag"}\n      pullPolicy: Always\n'
    ) in text
    assert (
        "    extra:\n      enabled: true\n    resources:\n      limits:\n        cpu: '2'\n  chart:" in text
    )
    assert "      chart: model\n" in text
    values = next(yaml.safe_load_all(text))["spec"]["values"]
    assert values["resources"] == {"limits": {"cpu": "2"}}
    assert text.count("#") == HELM_RELEASE.count("#")


def test_a_later_document_is_chosen_by_index(tmp_path: Path) -> None:
    path = write(tmp_path, HELM_RELEASE)

    set_yaml_value(path, "data.version", "2", document=1)

    assert path.read_text() == HELM_RELEASE.replace("version: '1'", "version: '2'")


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("spec.values.image", "x", "holds a mapping"),
        ("spec.values.args[5]", "x", "has no list item 5"),
        ("kind.sub", "x", "the value there is a scalar"),
        ("spec.values.args[0]", "two\nlines", "line breaks"),
        ("spec..x", "x", "cannot read path"),
    ],
)
def test_what_cannot_be_done_in_place_is_refused_and_the_file_kept(
    tmp_path: Path, path: str, value: str, problem: str
) -> None:
    file = write(tmp_path, HELM_RELEASE)

    with pytest.raises(YamlEditError, match=problem):
        set_yaml_value(file, path, value)

    assert file.read_text() == HELM_RELEASE


def test_anchors_and_block_scalars_are_refused(tmp_path: Path) -> None:
    file = write(tmp_path, "base: &tag v1\nuse: *tag\nnote: |\n  text\n")

    with pytest.raises(YamlEditError, match="anchored"):
        set_yaml_value(file, "base", "v2")
    with pytest.raises(YamlEditError, match="alias"):
        set_yaml_value(file, "use", "v2")
    with pytest.raises(YamlEditError, match="block scalar"):
        set_yaml_value(file, "note", "v2")


def test_crlf_files_stay_crlf(tmp_path: Path) -> None:
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"a:\r\n  b: 1\r\n")

    set_yaml_value(path, "a.c", 2)

    assert path.read_bytes() == b"a:\r\n  b: 1\r\n  c: 2\r\n"


def test_path_syntax() -> None:
    assert parse_path("spec.containers[0].image") == ["spec", "containers", 0, "image"]
    assert parse_path("images.0.newTag") == ["images", "0", "newTag"]
    assert parse_path(["metadata", "annotations", "a.b/c"]) == ["metadata", "annotations", "a.b/c"]


def test_kustomization_image_tag_is_set_in_place(tmp_path: Path) -> None:
    path = write(tmp_path, KUSTOMIZATION, "kustomization.yaml")

    assert set_kustomization_image(path, "ghcr.io/acme/model", new_tag="1.2.0") is True
    assert set_kustomization_image(path, "ghcr.io/acme/model", new_tag="1.2.0") is False

    assert path.read_text() == KUSTOMIZATION.replace("newTag: 1.0.0", "newTag: 1.2.0")


def test_kustomization_image_fields_and_entries_are_added(tmp_path: Path) -> None:
    path = write(tmp_path, KUSTOMIZATION, "kustomization.yaml")

    set_kustomization_image(path, "ghcr.io/acme/model", digest="sha256:" + "a" * 64)
    set_kustomization_image(path, "redis", new_name="mirror.local/redis", new_tag="7")

    text = path.read_text()
    assert text.startswith(KUSTOMIZATION)
    assert yaml.safe_load(text)["images"] == [
        {"name": "ghcr.io/acme/model", "newTag": "1.0.0", "digest": "sha256:" + "a" * 64},
        {"name": "redis", "newName": "mirror.local/redis", "newTag": "7"},
    ]
    assert "\n  - name: redis\n    newName: mirror.local/redis\n" in text


def test_kustomization_without_images_gets_the_list(tmp_path: Path) -> None:
    plain = "resources:\n  - a.yaml\n"
    empty = "resources: [a.yaml]\nimages: []  # none yet\n"
    first = write(tmp_path, plain, "one.yaml")
    second = write(tmp_path, empty, "two.yaml")

    set_kustomization_image(first, "app", new_tag="2")
    set_kustomization_image(second, "app", new_tag="2")

    assert first.read_text() == plain + "images:\n- name: app\n  newTag: '2'\n"
    assert second.read_text() == "resources: [a.yaml]\nimages:\n- name: app\n  newTag: '2'  # none yet\n"


def test_kustomization_image_needs_something_to_set(tmp_path: Path) -> None:
    path = write(tmp_path, KUSTOMIZATION, "kustomization.yaml")

    with pytest.raises(YamlEditError, match="at least one"):
        set_kustomization_image(path, "ghcr.io/acme/model")


scalars = st.one_of(
    st.text().filter(lambda text: "\n" not in text and "\r" not in text),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=scalars, path=st.sampled_from(["spec.values.image.tag", "spec.values.args[1]", "metadata.name"]))
def test_any_scalar_reads_back_exactly_and_nothing_else_moves(
    tmp_path: Path, value: Scalar, path: str
) -> None:
    file = write(tmp_path, HELM_RELEASE)

    set_yaml_value(file, path, value)

    text = file.read_text()
    data = next(yaml.safe_load_all(text))
    expected = next(yaml.safe_load_all(HELM_RELEASE))
    parts = parse_path(path)
    target = expected
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    assert data == expected
    assert list(yaml.safe_load_all(text))[1] == list(yaml.safe_load_all(HELM_RELEASE))[1]
    assert text.splitlines()[0] == HELM_RELEASE.splitlines()[0]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1).filter(lambda text: "\n" not in text and "\r" not in text), value=scalars)
def test_any_new_key_is_added_as_a_line(tmp_path: Path, key: str, value: Scalar) -> None:
    file = write(tmp_path, HELM_RELEASE)
    expected = next(yaml.safe_load_all(HELM_RELEASE))
    if key in expected["spec"]["values"]["image"]:
        return

    set_yaml_value(file, ["spec", "values", "image", key], value)

    expected["spec"]["values"]["image"][key] = value
    assert next(yaml.safe_load_all(file.read_text())) == expected
    assert file.read_text().startswith(HELM_RELEASE.split("    replicas:")[0])
