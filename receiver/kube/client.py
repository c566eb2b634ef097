"""The Kubernetes API client: in-cluster (the pod's ServiceAccount) or from a kubeconfig file."""

from __future__ import annotations

from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import load_incluster_config, load_kube_config

from receiver.config import KubernetesConfig


async def api_client(config: KubernetesConfig) -> ApiClient:
    """A client for the configured cluster; the caller closes it.

    Raises:
        kubernetes_asyncio.config.ConfigException: no in-cluster environment and no usable kubeconfig.
    """
    configuration = Configuration()
    if config.kubeconfig is not None:
        await load_kube_config(config_file=str(config.kubeconfig), client_configuration=configuration)
    else:
        load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return ApiClient(configuration)
