"""The Airflow asset URI of a Flux object, shared by the service and DAG authors.

The service emits asset events to this URI and DAGs schedule on it, so both
sides build it with this one function and can never disagree. Standard
library only: DAG files import it without the service's dependencies.
"""

from __future__ import annotations

import re

SCHEME = "flux"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def flux_object_uri(cluster: str, kind: str, namespace: str, name: str) -> str:
    """`flux://<cluster>/<Kind>/<namespace>/<name>`, e.g. `flux://prod/Kustomization/flux-system/apps`.

    Args:
        cluster: the cluster name, as set in the Flux Alert's `eventMetadata.cluster`
            (Fluxback uses `default` when events carry none).
        kind: the Flux kind (`Kustomization`, `HelmRelease`, ...).
        namespace: the object's namespace.
        name: the object's name.

    Raises:
        ValueError: a part is empty or holds characters a Kubernetes name cannot have.
    """
    for label, value in (("cluster", cluster), ("kind", kind), ("namespace", namespace), ("name", name)):
        if not _SAFE.fullmatch(value):
            raise ValueError(f"{label} {value!r} cannot be part of a Flux asset URI")
    return f"{SCHEME}://{cluster}/{kind}/{namespace}/{name}"
