"""POST /flux/events: bound, authenticate, validate, journal, answer.

The order matters. Size and content type are checked before reading, the body
is read in chunks that stop past the limit, the signature is checked over the
exact bytes before any parsing, and `202` is sent only after the journal has
committed the event, so an accepted event survives a crash. Nothing slow (git,
Airflow) happens here: Flux gives a delivery 15 s in total, retries included.
Each request ends in exactly one log line and one `events_received` count.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import structlog
from aiohttp import web

from receiver.auth import AuthMethod, CredentialsUnavailable, Unauthorized, WebhookAuth
from receiver.config import WebhookConfig
from receiver.events import EventInvalid, FluxEvent, parse_event
from receiver.health import AppendOutcomes
from receiver.intake import new_delivery
from receiver.journal import AppendResult, Journal, NewDelivery
from receiver.metrics import IngestResult, Metrics
from receiver.responses import json_error, unavailable

log = structlog.get_logger(__name__)

JSON_TYPE = "application/json"


class _Refusal(Exception):
    """Ends a request with an error answer; `detail` is safe to show to the sender."""

    def __init__(self, result: IngestResult, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.status = status
        self.error = error
        self.detail = detail

    def response(self) -> web.Response:
        if self.status == 503:
            return unavailable(self.error, self.detail)
        return json_error(self.status, self.error, self.detail)


class EventIngest:
    """The POST /flux/events handler and what it needs."""

    def __init__(
        self,
        config: WebhookConfig,
        auth: WebhookAuth,
        journal: Journal,
        metrics: Metrics,
        *,
        journal_timeout_seconds: float,
        appends: AppendOutcomes,
    ) -> None:
        self.config = config
        self.auth = auth
        self.journal = journal
        self.metrics = metrics
        self.journal_timeout_seconds = journal_timeout_seconds
        self.appends = appends

    async def handle(self, request: web.Request) -> web.Response:
        received_at = datetime.now(UTC)
        try:
            self._check_headers(request)
            body = await self._read_body(request)
            method = self._authenticate(request, body)
            event = self._parse(body, received_at)
            delivery = new_delivery(
                event,
                body=body,
                identity=hashlib.sha256(body).hexdigest(),
                received_at=received_at,
                authenticated_by=method.value,
                source="webhook",
            )
            result = await self._append(delivery)
        except _Refusal as refusal:
            self.metrics.events_by_result[refusal.result].inc()
            log.info(
                "event.refused",
                status=refusal.status,
                result=refusal.result.value,
                error=refusal.error,
                detail=refusal.detail,
                remote=request.remote,
            )
            return refusal.response()
        accepted = IngestResult.DUPLICATE if result.duplicate else IngestResult.ACCEPTED
        self.metrics.events_by_result[accepted].inc()
        log.info(
            "event.accepted",
            status=202,
            result=accepted.value,
            delivery_id=result.id,
            duplicate_of=result.duplicate_of,
            object=delivery.object_key,
            reason=delivery.reason,
            severity=delivery.severity,
            outcome=delivery.outcome,
            revision=delivery.revision,
            commit=delivery.commit,
            auth=delivery.authenticated_by,
            remote=request.remote,
        )
        return web.json_response({"id": result.id, "duplicate": result.duplicate}, status=202)

    def _check_headers(self, request: web.Request) -> None:
        if request.content_length is not None and request.content_length > self.config.max_body_bytes:
            raise self._too_large()
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise _Refusal(
                IngestResult.UNSUPPORTED_MEDIA_TYPE,
                415,
                "unsupported media type",
                "Content-Encoding must be identity: the signature covers the uncompressed body",
            )
        if request.content_type != JSON_TYPE:
            raise _Refusal(
                IngestResult.UNSUPPORTED_MEDIA_TYPE,
                415,
                "unsupported media type",
                f"Content-Type must be {JSON_TYPE}",
            )

    def _too_large(self) -> _Refusal:
        limit = self.config.max_body_bytes
        return _Refusal(
            IngestResult.TOO_LARGE, 413, "body too large", f"the limit is {limit} bytes (max_body_bytes)"
        )

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, read in chunks: never more than the limit in memory, never longer than the timeout."""
        limit = self.config.max_body_bytes
        content = request.content
        chunks: list[bytes] = []
        size = 0
        try:
            if content.is_eof():
                # The whole body came with the headers, as a Flux event's usually does: there is
                # nothing to wait for, so no timer to set.
                body = content.read_nowait()
                if len(body) > limit:
                    raise self._too_large()
                return body
            async with asyncio.timeout(self.config.read_timeout_seconds):
                async for chunk in content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise self._too_large()
                    chunks.append(chunk)
        except web.RequestPayloadError:  # aiohttp's parser: broken chunked encoding, short body
            raise _Refusal(
                IngestResult.MALFORMED,
                400,
                "malformed body",
                "the body's framing (chunks, length) is invalid",
            ) from None
        except ConnectionError:  # the client went away; the answer is for the log and the metrics
            raise _Refusal(
                IngestResult.MALFORMED, 400, "incomplete body", "the connection closed before the body ended"
            ) from None
        except TimeoutError:
            # A slow network is not the sender's mistake: 503 is retried by Flux, a 408 is not.
            raise _Refusal(
                IngestResult.TIMEOUT,
                503,
                "body timeout",
                f"the body did not arrive within {self.config.read_timeout_seconds:g} s; retry",
            ) from None
        return b"".join(chunks)

    def _authenticate(self, request: web.Request, body: bytes) -> AuthMethod:
        try:
            return self.auth.authenticate(request.headers, body)
        except Unauthorized as problem:
            raise _Refusal(IngestResult.UNAUTHORIZED, 401, "unauthorized", str(problem)) from None
        except CredentialsUnavailable:
            log.error("webhook.keys_unreadable", hint="check webhook.hmac_keys and webhook.bearer_tokens")
            raise _Refusal(
                IngestResult.CREDENTIALS_UNAVAILABLE,
                503,
                "credentials unavailable",
                "the receiver cannot read its keys right now",
            ) from None

    def _parse(self, body: bytes, received_at: datetime) -> FluxEvent:
        try:
            event = parse_event(body)
        except EventInvalid as problem:
            raise _Refusal(IngestResult.MALFORMED, 400, "malformed event", str(problem)) from None
        skew = self.config.max_clock_skew_seconds
        if skew and abs((received_at - event.timestamp).total_seconds()) > skew:
            raise _Refusal(
                IngestResult.STALE,
                400,
                "stale event",
                f"timestamp: more than {skew:g} s away from the receiver's clock (max_clock_skew_seconds)",
            )
        return event

    async def _append(self, delivery: NewDelivery) -> AppendResult:
        """Commit within the deadline, or answer 503 so that Flux's next attempt fits its 15 s.

        An append cut off by the deadline may still commit later; the sender's retry is then
        recognised by its body and answered with the same id, so nothing is stored twice.
        """
        deadline = self.journal_timeout_seconds
        try:
            async with asyncio.timeout(deadline):
                result = await self.journal.append(delivery)
        except TimeoutError:
            self.appends.failed(f"no commit within {deadline:g} s")
            log.warning("ingest.journal_timeout", timeout_seconds=deadline)
            raise _Refusal(
                IngestResult.JOURNAL_TIMEOUT,
                503,
                "journal unavailable",
                f"the event was not stored within {deadline:g} s; retry later",
            ) from None
        except Exception as error:  # any journal failure means "not committed": Flux must retry
            self.appends.failed(type(error).__name__)
            log.warning("ingest.journal_unavailable", error=str(error), error_type=type(error).__name__)
            raise _Refusal(
                IngestResult.JOURNAL_UNAVAILABLE,
                503,
                "journal unavailable",
                "the event was not stored; retry later",
            ) from None
        self.appends.succeeded()
        return result
