"""Every configured Airflow instance's client, looked up by the name a trailer or rule gives."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from receiver.airflow.client import AirflowClient
from receiver.airflow.errors import PermanentAirflowError
from receiver.airflow.transport import RequestObserver
from receiver.config import AirflowConfig


class AirflowClients:
    """One client per configured Airflow instance, looked up by the name a trailer or rule gives."""

    def __init__(self, clients: Mapping[str, AirflowClient]) -> None:
        self._clients = dict(clients)

    @classmethod
    def from_config(
        cls,
        config: AirflowConfig,
        session: aiohttp.ClientSession | None = None,
        on_request: RequestObserver | None = None,
    ) -> AirflowClients:
        """A client per `airflow.instances` entry, sharing `session` and `on_request` when given."""
        return cls(
            {
                name: AirflowClient(name, instance, session=session, on_request=on_request)
                for name, instance in config.instances.items()
            }
        )

    def get(self, name: str) -> AirflowClient:
        """The client for instance `name`.

        Raises:
            PermanentAirflowError: no instance has that name (a trailer or rule names an unknown one).
        """
        try:
            return self._clients[name]
        except KeyError:
            known = ", ".join(sorted(self._clients)) or "none"
            raise PermanentAirflowError(
                f"no Airflow instance named {name!r} in airflow.instances (configured: {known})"
            ) from None

    async def close(self) -> None:
        """Close every client's own HTTP session (a shared one stays open for its owner)."""
        for client in self._clients.values():
            await client.close()
