"""receiver.trailers: parsing must agree with git itself, formatting must parse back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.trailers import (
    AIRFLOW_DAG_ID,
    AIRFLOW_INSTANCE,
    AIRFLOW_MAP_INDEX,
    AIRFLOW_RUN_ID,
    AIRFLOW_TASK_ID,
    AirflowClaim,
    ClaimInvalid,
    Trailer,
    append_trailers,
    claim_from_trailers,
    claim_trailers,
    commit_trailers,
    format_trailers,
    parse_trailers,
)

SCISSORS = "# ------------------------ >8 ------------------------\n"

# (id, commit message): each is compared with `git interpret-trailers --parse --no-divider`.
CORPUS: list[tuple[str, str]] = [
    ("empty", ""),
    ("subject-no-newline", "Subject only"),
    ("subject-only", "Subject only\n"),
    ("lone-trailer-is-title", "Key: value\n"),
    ("simple", "Subject\n\nKey: value\n"),
    ("no-final-newline", "Subject\n\nKey: v"),
    ("prose-then-trailer", "Subject\n\nBody line\nKey: value\n"),
    ("trailer-in-middle-paragraph", "Subject\n\nKey: in the middle\n\nLast paragraph is prose.\n"),
    ("only-last-paragraph", "S\n\nA: 1\n\nB: 2\n"),
    ("continuation", "Subject\n\nKey: first\n  second\n\tthird\nOther: x\n"),
    ("continuation-of-non-trailer", "Subject\n\nSigned-off-by: A <a@b>\nprose\n  indented\nKey: v\n"),
    ("leading-continuation", "Subject\n\n  indented first\nKey: v\n"),
    ("mixed-case-keys", "Subject\n\nairflow-dag-id: d\nAIRFLOW-RUN-ID: r\nAirflow-Task-ID: t\n"),
    ("repeated-keys", "Subject\n\nAirflow-Task-Id: a\nAirflow-Task-Id: b\nAirflow-Task-Id: a\n"),
    ("space-before-colon", "Subject\n\nKey   : value\nOther\t: v2\n"),
    ("spaces-around-value", "S\n\nKey : \tvalue with trailing spaces   \n"),
    ("signed-off-with-prose", "Subject\n\nprose\nmore prose\nSigned-off-by: A <a@b>\nAirflow-Dag-Id: d\n"),
    ("crlf", "Subject\r\n\r\nKey: value\r\nOther: v\r\n"),
    ("crlf-continuation", "Subject\r\n\r\nKey: value\r\n  more\r\n"),
    ("trailing-blank-lines", "Subject\n\nKey: value\n\n\n"),
    ("trailing-whitespace-lines", "Subject\n\nKey: value\n  \n\t\n"),
    ("non-trailer-inside-block", "Subject\n\nKey: v\nnot a trailer\nOther: w\n"),
    ("quarter-rule-passes", "Subject\n\nSigned-off-by: A <a@b>\nline1\nline2\nline3\n"),
    ("quarter-rule-fails", "Subject\n\nSigned-off-by: A <a@b>\nline1\nline2\nline3\nline4\n"),
    ("signed-off-needs-exact-case", "Subject\n\nsigned-off-by: A <a@b>\nline1\n"),
    ("cherry-picked", "Subject\n\nKey: v\n(cherry picked from commit 0123abcd)\n"),
    (
        "cherry-picked-with-prose",
        "Subject\n\nprose a\nprose b\nprose c\n(cherry picked from commit abc)\nAirflow-Dag-Id: d\n",
    ),
    ("comment-inside-block", "Subject\n\nKey: v\n# a comment\nOther: w\n"),
    ("comment-breaks-continuation", "Subject\n\nKey: v\n# a comment\n  indented\n"),
    ("trailing-comments", "Subject\n\nKey: v\n\n# Please enter the commit message\n# lines\n"),
    ("comment-before-title", "# comment\nSubject\n\nKey: v\n"),
    ("comment-only", "# just a comment\n"),
    ("scissors", f"Subject\n\nKey: v\n{SCISSORS}diff --git a/x b/x\nOther: w\n"),
    ("divider-is-text", "Subject\n\n---\n\nKey: v\n"),
    ("divider-in-block", "Subject\n\nKey: v\n--- \nOther: w\n"),
    ("colons-in-value", "Subject\n\nLink: https://example.com/a:b\nRef: abc: def\n"),
    ("empty-values", "Subject\n\nKey:\nOther:   \n"),
    ("hash-is-not-separator", "Subject\n\nSigned-off-by: A\nBug #123: fix\n"),
    ("separator-first", "S\n\n: value\nKey: v\n"),
    ("underscore-key", "S\n\nX-1: a\n_bad: b\n"),
    ("leading-blank-line", "\nKey: v\n"),
    ("unicode-key-is-prose", "Sübject\n\nKëy: v\nKey: w\n"),
    ("unicode-value", "Subject\n\nKey: välue ✓\n"),
    ("blank-line-with-space", "S\n\nKey: a\n \nOther: b\n"),
    ("conflicts-block", "Subject\n\nKey: v\n\nConflicts:\n\tfile.txt\n"),
    ("title-with-trailing-space", "Subject   \n\n\n"),
    (
        "airflow-contract",
        "Deploy model v3\n\nBumps the image.\n\n"
        "Airflow-Dag-Id: deploy_model\nAirflow-Run-Id: manual__2026-11-25T08:00:00+00:00\n"
        "Airflow-Task-Id: wait_for_rollout\nAirflow-Map-Index: 3\nAirflow-Instance: prod\n"
        "Signed-off-by: Airflow <airflow@example.com>\n",
    ),
]


@pytest.fixture(scope="session")
def git_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory outside any repository; with the environment below, git reads no user config."""
    return tmp_path_factory.mktemp("git-home")


def _git_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }


def git_parse(message: str, home: Path) -> list[str]:
    """What git itself calls the trailers of a commit message, as `Key: value` lines."""
    result = subprocess.run(
        ["git", "interpret-trailers", "--parse", "--no-divider"],
        input=message.encode(),
        capture_output=True,
        check=True,
        cwd=home,
        env=_git_env(home),
    )
    return _lines(result.stdout.decode())


def _lines(output: str) -> list[str]:
    """Output lines split on `\\n` only: an unfolded value may keep a `\\r`, as git leaves it."""
    return [line for line in output.split("\n") if line]


def rendered(trailers: list[Trailer]) -> list[str]:
    return [f"{t.key}: {t.value}" for t in trailers]


@pytest.mark.parametrize(("name", "message"), CORPUS, ids=[name for name, _ in CORPUS])
def test_parse_agrees_with_git(name: str, message: str, git_home: Path) -> None:
    assert rendered(parse_trailers(message)) == git_parse(message, git_home)


def test_corpus_exercises_both_outcomes(git_home: Path) -> None:
    """Guard against a corpus where git and the parser agree only because nothing parses."""
    with_trailers = [name for name, message in CORPUS if git_parse(message, git_home)]
    assert len(CORPUS) >= 25
    assert 15 <= len(with_trailers) <= len(CORPUS) - 10


def test_commit_trailers_agree_with_git_log(tmp_path: Path) -> None:
    """commit_trailers reads stored commits as git log does: no `---` divider, leading blank lines skipped."""
    env = {**_git_env(tmp_path), "GIT_AUTHOR_NAME": "A", "GIT_AUTHOR_EMAIL": "a@b"}
    env |= {"GIT_COMMITTER_NAME": "A", "GIT_COMMITTER_EMAIL": "a@b"}
    subprocess.run(["git", "init", "-q", "--bare", "r.git"], cwd=tmp_path, env=env, check=True)
    repo = str(tmp_path / "r.git")
    tree = subprocess.run(
        ["git", "--git-dir", repo, "mktree"], input=b"", capture_output=True, env=env, check=True
    ).stdout.strip()
    for name, message in CORPUS:
        sha = subprocess.run(
            ["git", "--git-dir", repo, "commit-tree", tree.decode()],
            input=message.encode(),
            capture_output=True,
            env=env,
            check=True,
        ).stdout.strip()
        shown = subprocess.run(
            ["git", "--git-dir", repo, "log", "-1", "--format=%(trailers:only,unfold)", sha.decode()],
            capture_output=True,
            env=env,
            check=True,
        ).stdout.decode()
        assert rendered(commit_trailers(message)) == _lines(shown), name


def test_commit_trailers_skip_leading_blank_lines() -> None:
    assert parse_trailers("\n \nKey: v\n") == [Trailer("Key", "v")]
    assert commit_trailers("\n \nKey: v\n") == []
    assert commit_trailers("\n\nSubject\n\nKey: v\n") == [Trailer("Key", "v")]


def test_continuation_lines_are_folded() -> None:
    message = "Subject\n\nKey: first\n  second\n\tthird\nOther: x\n"
    assert parse_trailers(message) == [Trailer("Key", "first second third"), Trailer("Other", "x")]


def test_quarter_rule_needs_a_git_generated_trailer() -> None:
    passes = "Subject\n\nSigned-off-by: A <a@b>\nline1\nline2\nline3\n"
    fails = "Subject\n\nSigned-off-by: A <a@b>\nline1\nline2\nline3\nline4\n"
    assert parse_trailers(passes) == [Trailer("Signed-off-by", "A <a@b>")]
    assert parse_trailers(fails) == []
    assert parse_trailers("Subject\n\nKey: v\nprose\n") == []


def test_cherry_pick_line_counts_for_the_block_but_is_not_a_trailer() -> None:
    message = "Subject\n\nprose a\nprose b\nprose c\n(cherry picked from commit abc)\nAirflow-Dag-Id: d\n"
    assert parse_trailers(message) == [Trailer("Airflow-Dag-Id", "d")]


def test_keys_keep_spelling_and_compare_case_insensitively() -> None:
    (trailer,) = parse_trailers("Subject\n\nairflow-DAG-id : d\n")
    assert trailer.key == "airflow-DAG-id"
    assert trailer.has_key(AIRFLOW_DAG_ID)
    assert not trailer.has_key(AIRFLOW_RUN_ID)


# Lines that exercise every branch of git's rules when combined at random.
LINE_PIECES = [
    "",
    " ",
    "Subject",
    "Key: value",
    "key : value",
    "Other:",
    "Airflow-Dag-Id: d",
    "  continuation",
    "\tcontinuation",
    "# comment",
    "Signed-off-by: A <a@b>",
    "signed-off-by: A",
    "(cherry picked from commit abc)",
    "prose with: a colon",
    "Not a trailer",
    "---",
    "Conflicts:",
    "\tpath/in/conflict",
    "Key: crlf\r",
    "\r",
    ":",
    "-: dash",
    "Bug #1: x",
    "Këy: v",
    SCISSORS.rstrip("\n"),
]
# Commit messages are text: no NUL (git stops there), no lone surrogates (not encodable).
ONE_LINE = st.characters(exclude_characters="\n\x00", exclude_categories=["Cs"])
messages = st.builds(
    lambda lines, end: "\n".join(lines) + end,
    st.lists(st.sampled_from(LINE_PIECES) | st.text(ONE_LINE), max_size=12),
    st.sampled_from(["", "\n", "\n\n"]),
)
keys = st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True)
values = st.text(ONE_LINE, max_size=30).map(lambda value: value.strip(" \t\n\r"))
trailer_lists = st.lists(st.builds(Trailer, keys, values), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=messages)
def test_parse_agrees_with_git_on_generated_messages(message: str, git_home: Path) -> None:
    assert rendered(parse_trailers(message)) == git_parse(message, git_home)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=messages, trailers=trailer_lists)
def test_append_then_parse_round_trips(message: str, trailers: list[Trailer], git_home: Path) -> None:
    appended = append_trailers(message, trailers)
    assert parse_trailers(appended) == parse_trailers(message) + trailers
    assert git_parse(appended, git_home) == rendered(parse_trailers(message) + trailers)


def test_append_extends_an_existing_block_and_keeps_the_tail() -> None:
    message = "Subject\n\nBody.\n\nSigned-off-by: A <a@b>\n\n# comment\n"
    appended = append_trailers(message, [Trailer("Key", "v")])
    assert appended == "Subject\n\nBody.\n\nSigned-off-by: A <a@b>\nKey: v\n\n# comment\n"


def test_append_goes_before_whitespace_lines_that_end_the_block() -> None:
    """Found by the property test: a whitespace-only line after the block must stay after the new trailers."""
    message = "Subject\n\nConflicts:\n \n"
    assert append_trailers(message, [Trailer("Key", "v")]) == "Subject\n\nConflicts:\nKey: v\n \n"
    assert parse_trailers(append_trailers(message, [Trailer("Key", "v")])) == [
        Trailer("Conflicts", ""),
        Trailer("Key", "v"),
    ]


def test_append_keeps_an_unterminated_scissors_line_last(git_home: Path) -> None:
    """Found by the property test: a newline after that line would make git cut the trailers."""
    message = "# ------------------------ >8 ------------------------"
    appended = append_trailers(message, [Trailer("Key", "v")])
    assert parse_trailers(appended) == [Trailer("Key", "v")]
    assert git_parse(appended, git_home) == rendered([Trailer("Key", "v")])


def test_append_starts_a_new_paragraph_after_prose() -> None:
    assert append_trailers("Subject", [Trailer("Key", "v")]) == "Subject\n\nKey: v\n"
    assert append_trailers("Subject\n\nProse.\n", [Trailer("K", "")]) == "Subject\n\nProse.\n\nK: \n"


@pytest.mark.parametrize(
    "trailer",
    [Trailer("Bad Key", "v"), Trailer("", "v"), Trailer("Key:", "v"), Trailer("Kéy", "v")],
)
def test_format_refuses_keys_git_would_not_parse(trailer: Trailer) -> None:
    with pytest.raises(ValueError, match="must be ASCII letters"):
        format_trailers([trailer])


@pytest.mark.parametrize("value", ["two\nlines", " padded", "padded\t", "cr\r"])
def test_format_refuses_values_that_would_not_round_trip(value: str) -> None:
    with pytest.raises(ValueError, match="one line without surrounding spaces"):
        format_trailers([Trailer("Key", value)])


FULL_CLAIM = AirflowClaim(
    dag_id="deploy_model",
    run_id="manual__2026-11-25T08:00:00+00:00",
    task_ids=("wait_for_rollout", "notify"),
    map_index=3,
    instance="prod",
)


def test_no_airflow_trailers_is_no_claim() -> None:
    assert claim_from_trailers([]) is None
    assert claim_from_trailers([Trailer("Signed-off-by", "A <a@b>"), Trailer("Airflow", "x")]) is None


def test_claim_from_trailers_is_case_insensitive() -> None:
    claim = claim_from_trailers(
        [
            Trailer("airflow-dag-id", "d"),
            Trailer("Signed-off-by", "A"),
            Trailer("AIRFLOW-RUN-ID", "r"),
            Trailer("Airflow-Task-ID", "t1"),
            Trailer("airflow-task-id", "t2"),
        ]
    )
    assert claim == AirflowClaim("d", "r", ("t1", "t2"))


def test_claim_trailers_are_canonical_and_read_back() -> None:
    trailers = claim_trailers(FULL_CLAIM)
    assert format_trailers(trailers) == (
        "Airflow-Dag-Id: deploy_model\n"
        "Airflow-Run-Id: manual__2026-11-25T08:00:00+00:00\n"
        "Airflow-Task-Id: wait_for_rollout\n"
        "Airflow-Task-Id: notify\n"
        "Airflow-Map-Index: 3\n"
        "Airflow-Instance: prod\n"
    )
    assert claim_from_trailers(trailers) == FULL_CLAIM
    minimal = AirflowClaim("d", "r")
    assert claim_trailers(minimal) == [Trailer(AIRFLOW_DAG_ID, "d"), Trailer(AIRFLOW_RUN_ID, "r")]
    assert claim_from_trailers(claim_trailers(minimal)) == minimal


def test_claim_survives_a_commit_message() -> None:
    message = append_trailers("Deploy model\n\nSigned-off-by: A <a@b>\n", claim_trailers(FULL_CLAIM))
    assert claim_from_trailers(parse_trailers(message)) == FULL_CLAIM


def _claim_error(*pairs: tuple[str, str]) -> str:
    with pytest.raises(ClaimInvalid) as caught:
        claim_from_trailers([Trailer(key, value) for key, value in pairs])
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


DAG = (AIRFLOW_DAG_ID, "d")
RUN = (AIRFLOW_RUN_ID, "r")


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([DAG], "Airflow-Dag-Id without Airflow-Run-Id"),
        ([RUN], "Airflow-Run-Id without Airflow-Dag-Id"),
        ([(AIRFLOW_TASK_ID, "t")], "Airflow trailers without Airflow-Dag-Id and Airflow-Run-Id"),
        ([DAG, RUN, (AIRFLOW_DAG_ID, "other")], "more than one Airflow-Dag-Id ('d', 'other')"),
        ([DAG, RUN, (AIRFLOW_RUN_ID, "r2")], "more than one Airflow-Run-Id ('r', 'r2')"),
        ([DAG, RUN, (AIRFLOW_INSTANCE, "a"), (AIRFLOW_INSTANCE, "b")], "more than one Airflow-Instance"),
        ([DAG, RUN, (AIRFLOW_TASK_ID, "t"), (AIRFLOW_MAP_INDEX, "x")], "must be an integer >= 0, got 'x'"),
        ([DAG, RUN, (AIRFLOW_TASK_ID, "t"), (AIRFLOW_MAP_INDEX, "-1")], "must be an integer >= 0, got '-1'"),
        ([DAG, RUN, (AIRFLOW_TASK_ID, "t"), (AIRFLOW_MAP_INDEX, "+1")], "must be an integer >= 0, got '+1'"),
        ([DAG, RUN, (AIRFLOW_TASK_ID, "t"), (AIRFLOW_MAP_INDEX, "٣")], "must be an integer >= 0"),
        ([DAG, RUN, (AIRFLOW_MAP_INDEX, "2")], "Airflow-Map-Index needs an Airflow-Task-Id"),
        ([(AIRFLOW_DAG_ID, ""), RUN], "Airflow-Dag-Id is empty"),
        ([DAG, (AIRFLOW_RUN_ID, "")], "Airflow-Run-Id is empty"),
        ([DAG, RUN, (AIRFLOW_TASK_ID, "")], "Airflow-Task-Id is empty"),
        ([DAG, RUN, (AIRFLOW_INSTANCE, "")], "Airflow-Instance is empty"),
        ([DAG, RUN, ("Airflow-Dagid", "x")], "unknown trailer Airflow-Dagid"),
    ],
)
def test_invalid_claims_say_why(pairs: list[tuple[str, str]], reason: str) -> None:
    assert reason in _claim_error(*pairs)


def test_invalid_claim_lists_every_problem() -> None:
    reason = _claim_error((AIRFLOW_DAG_ID, "a"), (AIRFLOW_DAG_ID, "b"), (AIRFLOW_MAP_INDEX, "x"))
    assert "more than one Airflow-Dag-Id" in reason
    assert "Airflow-Dag-Id without Airflow-Run-Id" in reason
    assert "Airflow-Map-Index must be an integer" in reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"dag_id": ""}, "Airflow-Dag-Id '' must not be empty"),
        ({"run_id": " r"}, "Airflow-Run-Id ' r' must not be empty or have line breaks"),
        ({"task_ids": ("a\nb",)}, "Airflow-Task-Id 'a\\nb'"),
        ({"instance": ""}, "Airflow-Instance ''"),
        ({"task_ids": ("t",), "map_index": -1}, "Airflow-Map-Index must be >= 0, got -1"),
        ({"map_index": 0}, "Airflow-Map-Index needs an Airflow-Task-Id"),
    ],
)
def test_claims_are_validated_when_built(kwargs: dict[str, object], reason: str) -> None:
    fields: dict[str, object] = {"dag_id": "d", "run_id": "r"} | kwargs
    with pytest.raises(ClaimInvalid) as caught:
        AirflowClaim(**fields)  # type: ignore[arg-type]
    assert reason in caught.value.reason


def test_contract_example_carries_the_full_claim() -> None:
    message = dict(CORPUS)["airflow-contract"]
    expected = AirflowClaim(
        "deploy_model", "manual__2026-11-25T08:00:00+00:00", ("wait_for_rollout",), 3, "prod"
    )
    assert claim_from_trailers(parse_trailers(message)) == expected
