"""Kubernetes: Flux objects' status as a second source of events, and Events on the Flux objects."""

from receiver.kube.cluster import Cluster
from receiver.kube.observer import KubernetesEvents

__all__ = ["Cluster", "KubernetesEvents"]
