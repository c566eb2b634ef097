"""docs/install-with-flux.md: its HelmRepository and HelmRelease are valid Flux objects, and the
chart renders with the HelmRelease's values into objects and a config that pass the same checks
as the chart's own value sets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from cloudcoil.models.fluxcd.helm import v2
from cloudcoil.models.fluxcd.source import v1

from tests.chart.test_config import pod_files
from tests.chart.tools import CHART, NAMESPACE, REPO, render, run, tool

GUIDE = REPO / "docs" / "install-with-flux.md"


def guide_objects() -> dict[str, dict[str, Any]]:
    """The guide's YAML manifests by kind."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", GUIDE.read_text(), re.MULTILINE | re.DOTALL)
    docs = [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]
    return {doc["kind"]: doc for doc in docs}


def test_the_guide_holds_a_valid_helm_repository_and_helm_release() -> None:
    objects = guide_objects()
    repository = v1.HelmRepository.model_validate(objects["HelmRepository"])
    release = v2.HelmRelease.model_validate(objects["HelmRelease"])
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert release.spec is not None and release.spec.chart is not None and repository.spec is not None
    assert release.metadata is not None and repository.metadata is not None
    template = release.spec.chart.spec
    assert template.chart == chart["name"]
    assert (
        template.source_ref.kind == "HelmRepository" and template.source_ref.name == repository.metadata.name
    )
    assert release.metadata.namespace == repository.metadata.namespace
    major_minor = ".".join(chart["version"].split(".")[:2])
    assert template.version == f"{major_minor}.x"
    assert repository.spec.type == "oci" and repository.spec.url.startswith("oci://")


def test_the_chart_renders_the_guides_values_into_valid_objects_and_config(tmp_path: Path) -> None:
    release = guide_objects()["HelmRelease"]
    assert release["spec"]["targetNamespace"] == NAMESPACE
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(release["spec"]["values"]))
    rendered = render(values)
    validated = run(tool("kubernetes-validate"), "--strict", "-k", "1.32.0", "-", stdin=rendered.text)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert rendered.one("Provider")["metadata"]["namespace"] == "flux-system"
    checked = run(tool("fluxback"), "check-config", "--config", str(pod_files(rendered, tmp_path / "pod")))
    assert checked.returncode == 0, checked.stderr
