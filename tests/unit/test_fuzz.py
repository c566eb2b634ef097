"""Hypothesis against the parser and the handler: no crash, no 5xx, nothing journaled unauthenticated."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.events import SEVERITIES, EventInvalid, Outcome, classify, dedupe_key, event_commit, parse_event
from receiver.journal import DeliveryFilter
from tests.flux_replay import sign
from tests.fuzz_strategies import FIELDS, bodies, json_values
from tests.helpers import HMAC_KEY, Service


def _check_invariants(body: bytes) -> None:
    try:
        event = parse_event(body)
    except EventInvalid:
        return
    assert event.severity in SEVERITIES
    outcome = classify(event)
    assert outcome in Outcome
    commit = event_commit(event)
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{12}", commit)
    key = dedupe_key(event, outcome)
    assert key is None or re.fullmatch(r"[0-9a-f]{64}", key)


@given(bodies)
@settings(max_examples=300, deadline=None)
def test_parser_never_crashes(body: bytes) -> None:
    _check_invariants(body)


@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=10))
@settings(max_examples=200, deadline=None)
def test_parser_on_arbitrary_objects(raw: dict[str, Any]) -> None:
    _check_invariants(json.dumps(raw).encode())


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
header_values = {
    "Content-Type": st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""])
    | header_text,
    "X-Signature": header_text | st.builds(lambda d: f"sha256={d}", st.text("0123456789abcdef", max_size=64)),
    "Authorization": header_text | st.builds(lambda t: f"Bearer {t}", header_text),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity"]),
    "Gotk-Component": header_text,
    "Expect": st.just("100-continue"),
}


@st.composite
def request_headers(draw: st.DrawFn) -> dict[str, str]:
    names = draw(st.sets(st.sampled_from(sorted(header_values))))
    return {name: draw(header_values[name]) for name in names}


@given(body=bodies, headers=request_headers())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_handler_without_valid_credentials(
    service: Service, body: bytes, headers: dict[str, str]
) -> None:
    async with service.session.post(f"{service.url}/flux/events", data=body, headers=headers) as response:
        assert response.status < 500
        assert response.status != 202
        answer = await response.json()
    assert set(answer) == {"error", "detail"}
    assert await service.journal.list(DeliveryFilter()) == []


@given(body=bodies, headers=request_headers())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_handler_with_a_valid_signature(service: Service, body: bytes, headers: dict[str, str]) -> None:
    headers = {**headers, "X-Signature": sign(body, HMAC_KEY)}
    headers.pop("Content-Encoding", None)
    async with service.session.post(f"{service.url}/flux/events", data=body, headers=headers) as response:
        assert response.status < 500
        if response.status == 202:
            parse_event(body)
