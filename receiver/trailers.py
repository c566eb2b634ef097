"""Git commit trailers and the Airflow claim they carry.

Fluxback learns which Airflow run authored a commit from trailers such as
`Airflow-Dag-Id: deploy_model`. Both sides must agree with git about what is a
trailer, or a commit that `git log --format=%(trailers)` shows as claimed would
be ignored here (or the reverse), so `parse_trailers` follows git's `trailer.c`
(checked against git 2.39) with git's default configuration: `:` as the only
separator, `#` as the comment character, no `trailer.<token>.*` settings.

`parse_trailers` agrees with `git interpret-trailers --parse --no-divider`: a
`---` line is ordinary text, because a commit message has no patch part (git
reads stored commits the same way). `commit_trailers` is for messages read from
commit objects and agrees with `git log --format=%(trailers)`, which also skips
blank lines at the start of the message.

Standard library only: the DAG-author side (`receiver.dags`) imports this module
without the service's dependencies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

AIRFLOW_PREFIX = "Airflow-"
AIRFLOW_DAG_ID = "Airflow-Dag-Id"
AIRFLOW_RUN_ID = "Airflow-Run-Id"
AIRFLOW_TASK_ID = "Airflow-Task-Id"
AIRFLOW_MAP_INDEX = "Airflow-Map-Index"
AIRFLOW_INSTANCE = "Airflow-Instance"
AIRFLOW_KEYS = (AIRFLOW_DAG_ID, AIRFLOW_RUN_ID, AIRFLOW_TASK_ID, AIRFLOW_MAP_INDEX, AIRFLOW_INSTANCE)

# git's isspace() is ASCII-only and does not include \v or \f (ctype.c).
_SPACE = " \t\n\r"
_COMMENT = "#"
# Lines git itself writes; one of them lets a block pass with only 25% trailer lines.
_GIT_GENERATED_PREFIXES = ("Signed-off-by: ", "(cherry picked from commit ")
# `git commit --cleanup=scissors` cuts everything from this line on (wt-status.c).
_SCISSORS = "# ------------------------ >8 ------------------------\n"
# trailer.c find_separator(): a token of ASCII letters, digits and '-', optional blanks, then ':'.
_SEPARATOR = re.compile(r"(?:[A-Za-z0-9-]+[ \t]*)?:")
_KEY = re.compile(r"[A-Za-z0-9-]+")
_CONTINUATION = re.compile(r"\n[ \t\n\r]*")
_MAP_INDEX = re.compile(r"[0-9]+")
_LEADING_BLANK_LINES = re.compile(r"[ \t\n\r]*\n")


@dataclass(frozen=True)
class Trailer:
    """One `key: value` trailer; `key` keeps the author's spelling, compare it with `has_key`."""

    key: str
    value: str

    def has_key(self, key: str) -> bool:
        """Whether this trailer's key is `key`, ignoring case as git does."""
        return self.key.lower() == key.lower()


def _lines(text: str) -> list[str]:
    """Split on `\\n` only, keeping it: git does not end lines at `\\r` or other `str.splitlines` breaks."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _is_blank(line: str) -> bool:
    return not line.strip(_SPACE)


def _separator(line: str) -> int:
    """Index of the `:` ending the token, or -1 when the line does not start like a trailer."""
    match = _SEPARATOR.match(line)
    return match.end() - 1 if match else -1


def _message_end(lines: Sequence[str]) -> int:
    """Index of the first line of the ignorable tail: comments, blank lines, an old `Conflicts:` block.

    commit.c ignore_non_trailer(); like git, a tail that starts at the very first line is not
    recognised (git uses offset 0 as "no tail yet").
    """
    cutoff = lines.index(_SCISSORS) if _SCISSORS in lines else len(lines)
    tail = 0
    in_conflicts = False
    for index, line in enumerate(lines[:cutoff]):
        if line.startswith((_COMMENT, "\n")):
            tail = tail or index
        elif line == "Conflicts:\n":
            in_conflicts = True
            tail = tail or index
        elif in_conflicts and line.startswith("\t"):
            continue
        elif tail:
            tail = 0
            in_conflicts = False
    return tail or cutoff


def _block_start(lines: Sequence[str]) -> int:
    """Index of the first line of the trailer block in `lines`, or `len(lines)` when there is none.

    trailer.c find_trailer_start(): the block is the last paragraph after the title, if all
    its lines are trailers (or their continuations), or if it has a git-generated trailer and
    at least 25% of its lines are trailers.
    """
    title_end = len(lines)
    for index, line in enumerate(lines):
        if not line.startswith(_COMMENT) and _is_blank(line):
            title_end = index
            break
    only_blank = True
    recognized = False
    trailer_lines = non_trailer_lines = possible_continuations = 0
    for index in range(len(lines) - 1, title_end - 1, -1):
        line = lines[index]
        if line.startswith(_COMMENT):
            non_trailer_lines += possible_continuations
            possible_continuations = 0
        elif _is_blank(line):
            if only_blank:
                continue
            non_trailer_lines += possible_continuations
            if (recognized and trailer_lines * 3 >= non_trailer_lines) or (
                trailer_lines and not non_trailer_lines
            ):
                return index + 1
            return len(lines)
        else:
            only_blank = False
            if line.startswith(_GIT_GENERATED_PREFIXES):
                recognized = True
                trailer_lines += 1
                possible_continuations = 0
            elif _separator(line) >= 1:
                trailer_lines += 1
                possible_continuations = 0
            elif line[0] in _SPACE:
                possible_continuations += 1
            else:
                non_trailer_lines += 1 + possible_continuations
                possible_continuations = 0
    return len(lines)


def _block(message: str) -> tuple[list[str], int, int]:
    """The message's lines, and the start and end indexes of its trailer block (equal if none)."""
    lines = _lines(message)
    end = _message_end(lines)
    return lines, _block_start(lines[:end]), end


def parse_trailers(message: str) -> list[Trailer]:
    """The trailers of a commit message, in order, exactly as `git interpret-trailers --parse` lists them.

    Continuation lines are folded into one space; lines of the block that are not `key: value`
    (such as `(cherry picked from commit ...)`) are not trailers and are left out, as git does.
    """
    lines, start, end = _block(message)
    entries: list[str] = []
    folds = False
    for line in lines[start:end]:
        if folds and line[0] in _SPACE:
            entries[-1] += line
            continue
        entries.append(line)
        folds = _separator(line) >= 1
    trailers: list[Trailer] = []
    for entry in entries:
        separator = _separator(entry)
        if separator >= 1:
            value = _CONTINUATION.sub(" ", entry[separator + 1 :].strip(_SPACE)).strip(_SPACE)
            trailers.append(Trailer(entry[:separator].strip(_SPACE), value))
    return trailers


def commit_trailers(message: str) -> list[Trailer]:
    """The trailers of a stored commit's message, exactly as `git log --format=%(trailers)` lists them.

    git starts a commit's message at its first non-blank line (pretty.c skip_blank_lines()),
    so a message that starts with a blank line does not turn its first paragraph into a trailer block.
    """
    leading = _LEADING_BLANK_LINES.match(message)
    return parse_trailers(message[leading.end() :] if leading else message)


def format_trailers(trailers: Iterable[Trailer]) -> str:
    """Render trailers as `Key: value` lines, refusing any that would not parse back unchanged.

    Raises:
        ValueError: a key is not letters, digits and `-`, or a value has a line break or
            surrounding whitespace.
    """
    lines: list[str] = []
    for trailer in trailers:
        if not _KEY.fullmatch(trailer.key):
            raise ValueError(f"trailer key {trailer.key!r} must be ASCII letters, digits and '-'")
        if "\n" in trailer.value or trailer.value != trailer.value.strip(_SPACE):
            raise ValueError(
                f"trailer {trailer.key} value {trailer.value!r} must be one line without surrounding spaces"
            )
        lines.append(f"{trailer.key}: {trailer.value}\n")
    return "".join(lines)


def append_trailers(message: str, trailers: Iterable[Trailer]) -> str:
    """Add trailers to a commit message: to its trailer block if it has one, else as a new last paragraph.

    Unlike `git interpret-trailers --trailer`, every trailer is added (no if-exists rules), so
    `parse_trailers(append_trailers(m, t)) == parse_trailers(m) + t`. Trailing comment and blank
    lines stay after the trailers, where git ignores them.

    Raises:
        ValueError: as `format_trailers`.
    """
    block = format_trailers(trailers)
    lines, start, end = _block(message)
    at = end
    while start < at and _is_blank(lines[at - 1]):
        at -= 1  # whitespace-only lines after a block are part of it; keep them after the new trailers
    if at and lines[at - 1] == _SCISSORS.removesuffix("\n"):
        at -= 1  # ending it with a newline would make it a scissors line that hides what follows
    head = "".join(lines[:at])
    if head and not head.endswith("\n"):
        head += "\n"
    if start == end and (not head or not _is_blank(lines[at - 1])):
        head += "\n"
    return head + block + "".join(lines[at:])


class ClaimInvalid(ValueError):
    """A commit's `Airflow-*` trailers do not form a valid claim; `reason` says why, for operators."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class AirflowClaim:
    """The Airflow run (and optionally its task instances) a commit says it was authored by."""

    dag_id: str
    run_id: str
    task_ids: tuple[str, ...] = ()
    map_index: int | None = None
    instance: str | None = None

    def __post_init__(self) -> None:
        problems = [
            f"{key} {value!r} must not be empty or have line breaks or surrounding spaces"
            for key, value in (
                (AIRFLOW_DAG_ID, self.dag_id),
                (AIRFLOW_RUN_ID, self.run_id),
                *((AIRFLOW_TASK_ID, task_id) for task_id in self.task_ids),
                *(() if self.instance is None else ((AIRFLOW_INSTANCE, self.instance),)),
            )
            if not value or "\n" in value or value != value.strip(_SPACE)
        ]
        if self.map_index is not None:
            if self.map_index < 0:
                problems.append(f"{AIRFLOW_MAP_INDEX} must be >= 0, got {self.map_index}")
            if not self.task_ids:
                problems.append(f"{AIRFLOW_MAP_INDEX} needs an {AIRFLOW_TASK_ID} to apply to")
        if problems:
            raise ClaimInvalid("; ".join(problems))


def _single(values: dict[str, list[str]], key: str, problems: list[str]) -> str | None:
    found = values[key]
    if len(found) > 1:
        problems.append(f"more than one {key} ({', '.join(repr(v) for v in found)})")
    return found[0] if found else None


def claim_from_trailers(trailers: Iterable[Trailer]) -> AirflowClaim | None:
    """The Airflow claim made by a commit's trailers; None when it has no `Airflow-*` trailer at all.

    Keys are case-insensitive. `Airflow-Task-Id` may repeat; the other keys may appear once.
    An unknown `Airflow-*` key is an error rather than ignored, so a typo cannot silently drop
    part of a claim.

    Raises:
        ClaimInvalid: the trailers name Airflow but do not form a valid claim; every problem found
            is in the reason.
    """
    values: dict[str, list[str]] = {key: [] for key in AIRFLOW_KEYS}
    canonical = {key.lower(): key for key in AIRFLOW_KEYS}
    problems: list[str] = []
    seen = False
    for trailer in trailers:
        if not trailer.key.lower().startswith(AIRFLOW_PREFIX.lower()):
            continue
        seen = True
        key = canonical.get(trailer.key.lower())
        if key is None:
            problems.append(f"unknown trailer {trailer.key} (known: {', '.join(AIRFLOW_KEYS)})")
        elif not trailer.value:
            problems.append(f"{key} is empty")
        else:
            values[key].append(trailer.value)
    if not seen:
        return None
    dag_id = _single(values, AIRFLOW_DAG_ID, problems)
    run_id = _single(values, AIRFLOW_RUN_ID, problems)
    map_index_text = _single(values, AIRFLOW_MAP_INDEX, problems)
    instance = _single(values, AIRFLOW_INSTANCE, problems)
    if dag_id is None and run_id is not None:
        problems.append(f"{AIRFLOW_RUN_ID} without {AIRFLOW_DAG_ID}")
    elif run_id is None and dag_id is not None:
        problems.append(f"{AIRFLOW_DAG_ID} without {AIRFLOW_RUN_ID}")
    elif dag_id is None and run_id is None:
        problems.append(f"Airflow trailers without {AIRFLOW_DAG_ID} and {AIRFLOW_RUN_ID}")
    map_index = None
    if map_index_text is not None:
        if _MAP_INDEX.fullmatch(map_index_text):
            map_index = int(map_index_text)
        else:
            problems.append(f"{AIRFLOW_MAP_INDEX} must be an integer >= 0, got {map_index_text!r}")
    if problems or dag_id is None or run_id is None:
        raise ClaimInvalid("; ".join(problems))
    return AirflowClaim(dag_id, run_id, tuple(values[AIRFLOW_TASK_ID]), map_index, instance)


def claim_trailers(claim: AirflowClaim) -> list[Trailer]:
    """The canonical trailers for a claim, in the order `claim_from_trailers` reads back to the same claim."""
    trailers = [Trailer(AIRFLOW_DAG_ID, claim.dag_id), Trailer(AIRFLOW_RUN_ID, claim.run_id)]
    trailers += [Trailer(AIRFLOW_TASK_ID, task_id) for task_id in claim.task_ids]
    if claim.map_index is not None:
        trailers.append(Trailer(AIRFLOW_MAP_INDEX, str(claim.map_index)))
    if claim.instance is not None:
        trailers.append(Trailer(AIRFLOW_INSTANCE, claim.instance))
    return trailers
