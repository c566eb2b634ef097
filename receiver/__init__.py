"""Fluxback: Flux CD events in, Airflow task states, DAG runs and asset events out."""

__version__ = "0.1.0"
