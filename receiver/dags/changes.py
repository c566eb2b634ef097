"""Ready-made changes for `commit_and_push` and `GitCommitOperator`: set a YAML value, set an image, revert.

Each is a small object rather than a closure so that Airflow renders its fields
as templates (`template_fields`): `YamlValue("apps/model/release.yaml",
"spec.values.image.tag", "{{ params.version }}")` gets the run's value when the
task runs. Paths are relative to the repository root and may not leave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from receiver.dags.git_push import WorkTree
from receiver.dags.yaml_edit import Scalar, YamlPath, set_kustomization_image, set_yaml_value


@dataclass
class YamlValue:
    """Set one scalar in a YAML file, e.g. the image tag of a HelmRelease (see `set_yaml_value`)."""

    template_fields: ClassVar[tuple[str, ...]] = ("file", "path", "value")

    file: str
    """The file, relative to the repository root."""
    path: YamlPath
    """The value's path, e.g. `spec.values.image.tag`."""
    value: Scalar
    document: int = 0
    """Which `---` document of the file."""

    def __call__(self, tree: WorkTree) -> None:
        set_yaml_value(tree.file(self.file), self.path, self.value, document=self.document)


@dataclass
class KustomizeImage:
    """Set an image's `newTag`, `newName` or `digest` in a kustomization (see `set_kustomization_image`)."""

    template_fields: ClassVar[tuple[str, ...]] = ("file", "name", "new_tag", "new_name", "digest")

    file: str
    """The kustomization.yaml, relative to the repository root."""
    name: str
    """The image name used in the manifests."""
    new_tag: str | None = None
    new_name: str | None = None
    digest: str | None = None

    def __call__(self, tree: WorkTree) -> None:
        set_kustomization_image(
            tree.file(self.file), self.name, new_tag=self.new_tag, new_name=self.new_name, digest=self.digest
        )


@dataclass
class RevertCommit:
    """Undo a commit (`git revert`), the GitOps way to roll a deploy back.

    On a retry after a rejected push the revert is applied to the new tip; if a later commit
    changed the same lines, git stops with a conflict and the task fails for a person to decide.
    """

    template_fields: ClassVar[tuple[str, ...]] = ("commit",)

    commit: str
    """The commit to revert (full or abbreviated SHA)."""

    def __call__(self, tree: WorkTree) -> None:
        tree.git("revert", "--no-commit", self.commit.strip())
