"""The trailers that tie a commit to the Airflow task instance waiting for its deploy.

Fluxback reads these trailers to know which task to mark when Flux reports a
revision. Both directions go through `receiver.trailers` (the service's own
parser and renderer), so the DAG side cannot write a block that the service
reads differently: `read_airflow_trailers(add_airflow_trailers(m, ctx, ...))`
gives back exactly the claim that was rendered.

Only the running task instance (`context["ti"]`: its `dag_id`, `run_id` and
`map_index`) and its run's clear number (`context["dag_run"].clear_number`) are read
from the context, which keeps these functions usable from any operator or `@task`
and testable without Airflow.

`add_airflow_trailers` also writes `Fluxback-Clear-Number: N` once the run has been
cleared (Airflow counts every clear of a run's tasks; retries do not count). Not an
`Airflow-*` key, so the service ignores it; it makes the message of a try after a
clear differ from every message before it, and `commit_and_push` reuses an earlier
commit only when the message is the same, so an earlier try's push is reused only
within one clear of the run, never a deploy of days ago.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from receiver.trailers import (
    AirflowClaim,
    Trailer,
    append_trailers,
    claim_from_trailers,
    claim_trailers,
    format_trailers,
    parse_trailers,
)

CLEAR_NUMBER = "Fluxback-Clear-Number"
"""How often the run had been cleared when the commit was made; written only after a clear."""

MapIndex = int | None | Literal["same"]
"""`"same"`: the running task's own map index (none when it is not mapped); an int: that index;
None: no index, so Fluxback marks every index of a mapped task."""


def airflow_claim(
    context: Mapping[str, Any],
    *,
    mark: str | Sequence[str] = (),
    map_index: MapIndex = "same",
    instance: str | None = None,
) -> AirflowClaim:
    """The claim a commit made by the running task instance carries.

    Args:
        context: the running task's context (only `context["ti"]` is read).
        mark: the task id(s) Fluxback marks success or failed when Flux reports the
            commit, typically the `WaitForDeploySensor` downstream of the committing task.
            Empty: the commit names its run (for rules and asset events) but no task is marked.
        map_index: which index of a mapped `mark` task; by default the committing task's own
            index, for a commit task and a sensor mapped over the same input.
        instance: the name of the Airflow instance in Fluxback's config (`airflow.instances`),
            when Fluxback talks to more than one; None means Fluxback's default.

    Raises:
        receiver.trailers.ClaimInvalid: an id is empty or would not survive as a trailer value.
    """
    ti = context["ti"]
    task_ids = (mark,) if isinstance(mark, str) else tuple(mark)
    if map_index == "same":
        own_index = getattr(ti, "map_index", -1)
        index = own_index if task_ids and isinstance(own_index, int) and own_index >= 0 else None
    else:
        index = map_index
    return AirflowClaim(
        dag_id=str(ti.dag_id),
        run_id=str(ti.run_id),
        task_ids=task_ids,
        map_index=index,
        instance=instance,
    )


def airflow_trailers(
    context: Mapping[str, Any],
    *,
    mark: str | Sequence[str] = (),
    map_index: MapIndex = "same",
    instance: str | None = None,
) -> str:
    """The trailer block (`Airflow-Dag-Id: ...` lines) for a commit made by the running task.

    Arguments as `airflow_claim`. Use `add_airflow_trailers` to put the block into a message:
    git only reads trailers from the message's last paragraph.
    """
    claim = airflow_claim(context, mark=mark, map_index=map_index, instance=instance)
    return format_trailers(claim_trailers(claim))


def add_airflow_trailers(
    message: str,
    context: Mapping[str, Any],
    *,
    mark: str | Sequence[str] = (),
    map_index: MapIndex = "same",
    instance: str | None = None,
) -> str:
    """`message` with the running task's trailers added to its trailer block (or as a new one).

    Arguments as `airflow_claim`. After a clear of the run, `Fluxback-Clear-Number` follows
    the `Airflow-*` trailers (see the module's docstring).
    """
    claim = airflow_claim(context, mark=mark, map_index=map_index, instance=instance)
    trailers = claim_trailers(claim)
    clears = getattr(context.get("dag_run"), "clear_number", None) or 0
    if clears:
        trailers.append(Trailer(CLEAR_NUMBER, str(clears)))
    return append_trailers(message, trailers)


def read_airflow_trailers(message: str) -> AirflowClaim | None:
    """The claim a commit message makes, read exactly as Fluxback reads it; None without `Airflow-*` trailers.

    Raises:
        receiver.trailers.ClaimInvalid: the message has `Airflow-*` trailers that Fluxback would
            reject; the reason says which.
    """
    return claim_from_trailers(parse_trailers(message))
