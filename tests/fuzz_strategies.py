"""Hypothesis strategies shared by the in-process fuzz tests and the reliability suite's HTTP fuzzing."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.flux_replay import EXAMPLES, payload

FIELDS = (
    "involvedObject",
    "severity",
    "timestamp",
    "message",
    "reason",
    "metadata",
    "reportingController",
    "reportingInstance",
)
_PAYLOADS = {name: payload(name) for name in EXAMPLES}
"""Read once: thousands of cases per run."""
OBJECT_FIELDS = ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion")

LONE_SURROGATES = st.sampled_from(["app\ud800", "\udfff", "x\udc00y"])
"""Strings that JSON can carry as \\ud800 escapes but no encoder accepts."""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=60)
    | LONE_SURROGATES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


_EXAMPLE_NAMES = st.sampled_from(EXAMPLES)
_EDITS = st.integers(0, 3)
_OBJECT_FIELD_NAMES = st.sampled_from(OBJECT_FIELDS) | st.text(max_size=8)
_FIELD_NAMES = st.sampled_from(FIELDS) | st.text(max_size=8)
_FIELD_VALUES = json_values | st.sampled_from(["info", "error", "2026-08-10T09:15:42Z", ""])


@st.composite
def mutated_events(draw: st.DrawFn) -> bytes:
    """A real Flux payload with a few fields replaced, removed or added."""
    raw: dict[str, Any] = json.loads(_PAYLOADS[draw(_EXAMPLE_NAMES)])
    for _ in range(draw(_EDITS)):
        target = raw
        if draw(st.booleans()) and isinstance(raw.get("involvedObject"), dict):
            target = raw["involvedObject"]
            name = draw(_OBJECT_FIELD_NAMES)
        else:
            name = draw(_FIELD_NAMES)
        if draw(st.booleans()):
            target.pop(name, None)
        else:
            target[name] = draw(_FIELD_VALUES)
    return json.dumps(raw).encode()


bodies = st.binary(max_size=600) | mutated_events()
