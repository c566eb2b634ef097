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

Logs, errors and `repr` name the Receiver by scheme://host[:port] only: for a
`generic` Receiver the `/hook/<digest>` path is the secret (anyone who knows it
can make Flux reconcile), and user info in the URL would be a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
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

    url: str = field(repr=False)
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"the Flux Receiver URL must start with http:// or https://, not {scheme!r}")
        if not self.token:
            raise ValueError("the Flux Receiver token is empty")

    def __repr__(self) -> str:
        return f"FluxReceiver({self.origin})"

    @property
    def origin(self) -> str:
        """scheme://host[:port] of the Receiver: what may be shown of its URL."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

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
            problem = f"answered {error.code} {error.reason}"
        except (urllib.error.URLError, OSError) as error:
            problem = f"not reachable ({getattr(error, 'reason', error)})"
        except (ValueError, http.client.HTTPException) as error:
            # A malformed URL (`InvalidURL` quotes the whole URL, so only its type is shown) or answer.
            problem = f"not usable ({type(error).__name__})"
        else:
            log.info("asked Flux to reconcile now via the Receiver at %s (%d)", self.origin, status)
            return True
        log.warning(
            "Flux Receiver at %s %s; Flux will reconcile at its next interval instead", self.origin, problem
        )
        return False
