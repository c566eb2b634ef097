"""Kubernetes: Flux objects' status as a second source of events, and Events on the Flux objects."""

from receiver.kube.cluster import Cluster

__all__ = ["Cluster"]
