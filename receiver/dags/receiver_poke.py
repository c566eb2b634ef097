"""Ask Flux to reconcile now, through a Flux `Receiver` of type `generic-hmac`.

Without a poke Flux notices the new commit at the GitRepository's next
interval (often minutes); a Receiver webhook makes the source controller fetch
at once, so the deploy, and the wait for it, is shorter. The poke is an
optimisation only: when it fails, a warning is logged and Flux still reconciles
at its interval, so it never fails the task.

The request follows the Receiver contract: any method on the Receiver's
`/hook/<...>` path, `X-Signature: sha256=<hex>` being the HMAC-SHA256 of the raw
body keyed with the Receiver's token; the body itself only matters to CEL
filters, so it is a small JSON object naming the run and the revision.
Standard library only (`urllib`), as it runs on Airflow workers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FluxReceiver:
    """A Flux Receiver webhook: its full URL and its token (the Secret's `token` key, used as is)."""

    url: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"Flux Receiver URL {self.url!r} must start with http:// or https://")
        if not self.token:
            raise ValueError("the Flux Receiver token is empty")

    @classmethod
    def from_connection(cls, connection: Any) -> FluxReceiver:
        """From an Airflow Connection: extra `url` or else `host` is the full URL, `password` the token."""
        extra: Mapping[str, Any] = getattr(connection, "extra_dejson", None) or {}
        return cls(url=str(extra.get("url") or connection.host or ""), token=connection.password or "")

    def signature(self, body: bytes) -> str:
        """The `X-Signature` header value for `body`."""
        return "sha256=" + hmac.new(self.token.encode(), body, hashlib.sha256).hexdigest()

    def poke(self, payload: Mapping[str, Any] | None = None, *, timeout: float = 10.0) -> bool:
        """POST `payload` as compact JSON to the Receiver; True on 2xx, else a logged warning and False."""
        body = json.dumps(dict(payload or {}), separators=(",", ":"), sort_keys=True).encode()
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s) above
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "X-Signature": self.signature(body)},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - as above
                status = response.status
        except urllib.error.HTTPError as error:
            log.warning(
                "Flux Receiver %s answered %d %s; Flux will reconcile at its next interval instead",
                self.url,
                error.code,
                error.reason,
            )
            return False
        except (urllib.error.URLError, OSError, ValueError) as error:  # ValueError: a malformed URL
            reason = getattr(error, "reason", error)
            log.warning(
                "Flux Receiver %s not reachable (%s); Flux will reconcile at its next interval instead",
                self.url,
                reason,
            )
            return False
        log.info("asked Flux to reconcile now via Receiver %s (%d)", self.url, status)
        return True
