"""Commit a change with the run's trailers and push it: `GitCommitOperator`, or `push_change` in a `@task`.

The operator is a thin layer over `commit_and_push`: it reads credentials from
an Airflow Connection, renders the run's `Airflow-*` trailers into the message,
returns the push result as its XCom (what `WaitForDeploySensor` waits on), and
optionally pokes a Flux Receiver so that Flux does not wait for its interval.

Connection (`git_conn_id`, any connection type): `host` is the repository URL,
without credentials (unless `repository` is given); `login` + `password` are the
HTTPS user and token; extra `private_key` (+ `known_hosts`) is an SSH key; extra
`author_name` / `author_email` set the commit author.

This module imports Airflow; `receiver.dags` loads it only when one of its names is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseHook, BaseOperator, Context

from receiver.dags.git_push import Change, GitAuth, GitIdentity, PushResult, commit_and_push
from receiver.dags.receiver_poke import FluxReceiver
from receiver.dags.trailers import MapIndex, add_airflow_trailers


def push_change(
    context: Mapping[str, Any],
    *,
    git_conn_id: str,
    change: Change | Sequence[Change],
    message: str,
    repository: str | None = None,
    branch: str = "main",
    mark: str | Sequence[str] = (),
    mark_map_index: MapIndex = "same",
    instance: str | None = None,
    flux_receiver_conn_id: str | None = None,
    attempts: int = 5,
    workdir: str | None = None,
) -> PushResult:
    """Commit `change` with the running task's trailers and push it; for use inside a `@task`.

    Args:
        context: the running task's context.
        git_conn_id: the Airflow Connection with the repository's URL and credentials.
        change: callable(s) that edit the work tree (`YamlValue`, `KustomizeImage`,
            `RevertCommit`, or your own `def change(tree: WorkTree)`).
        message: the commit message, without trailers (they are added).
        repository: the repository URL; the connection's `host` when None.
        branch: the branch Flux follows.
        mark: the task id(s) Fluxback marks when Flux reports this commit (the waiting sensor).
        mark_map_index: which index of a mapped `mark` task; see `receiver.dags.airflow_claim`.
        instance: the Airflow instance name in Fluxback's config, when it has several.
        flux_receiver_conn_id: a Connection for a Flux Receiver to poke after a push
            (`host` or extra `url`: its full URL; `password`: its token).
        attempts: push attempts while the branch keeps moving.
        workdir: keep the clone here and fetch into it next time (large repositories; one task
            at a time per directory); by default each run clones into a temporary directory.
    """
    receiver = _flux_receiver(flux_receiver_conn_id)  # first: a bad connection fails before the push
    url, auth, author = _git_connection(git_conn_id, repository)
    claimed = add_airflow_trailers(message, context, mark=mark, map_index=mark_map_index, instance=instance)
    result = commit_and_push(
        url,
        change=change,
        message=claimed,
        branch=branch,
        auth=auth,
        author=author,
        attempts=attempts,
        workdir=workdir,
    )
    _poke(receiver, context, result)
    return result


def _flux_receiver(conn_id: str | None) -> FluxReceiver | None:
    """The Flux Receiver named by connection `conn_id`, if one is named."""
    return FluxReceiver.from_connection(BaseHook.get_connection(conn_id)) if conn_id else None


def _git_connection(git_conn_id: str, repository: str | None) -> tuple[str, GitAuth, GitIdentity]:
    """Where to push, with which credentials and as whom: all from the one Airflow Connection."""
    connection = BaseHook.get_connection(git_conn_id)
    url = repository or connection.host
    if not url:
        raise ValueError(f"no repository: pass repository= or set the host of connection {git_conn_id!r}")
    extra: Mapping[str, Any] = connection.extra_dejson or {}
    default = GitIdentity()
    author = GitIdentity(
        name=extra.get("author_name") or default.name, email=extra.get("author_email") or default.email
    )
    return url, GitAuth.from_connection(connection), author


def _poke(receiver: FluxReceiver | None, context: Mapping[str, Any], result: PushResult) -> None:
    """Have Flux fetch a new commit now rather than at its interval.

    A failed poke only warns (`FluxReceiver.poke`): Flux reconciles at its interval anyway.
    """
    if receiver is not None and result.committed:
        ti = context["ti"]
        receiver.poke({"dag_id": ti.dag_id, "run_id": ti.run_id, "revision": result.revision})


class GitCommitOperator(BaseOperator):  # type: ignore[misc]  # Airflow is not installed where mypy runs
    """Commit a change to a GitOps repository with this run's trailers, push it, return the push result.

    The XCom is `{"revision": "main@sha1:<sha>", "commit": sha, "committed": bool,
    "repository": url, "branch": ...}`. When the change changes nothing, nothing is committed
    (`committed: false`, `commit` is the branch tip) and `WaitForDeploySensor` does what its
    `when_unchanged` says; unless an earlier try of this task since the run's last clear pushed
    it, then that commit is returned as committed.
    Arguments are those of `push_change`; `message`, `repository`, `branch`, `mark`,
    `instance`, the connection ids and the fields of the ready-made changes are templated.
    """

    template_fields: Sequence[str] = (
        "message",
        "changes",
        "repository",
        "branch",
        "mark",
        "instance",
        "git_conn_id",
        "flux_receiver_conn_id",
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        git_conn_id: str,
        change: Change | Sequence[Change],
        message: str,
        repository: str | None = None,
        branch: str = "main",
        mark: str | Sequence[str] = (),
        mark_map_index: MapIndex = "same",
        instance: str | None = None,
        flux_receiver_conn_id: str | None = None,
        attempts: int = 5,
        workdir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.git_conn_id = git_conn_id
        # Always a list: Airflow calls a callable template field instead of rendering it, while
        # a list's items are rendered through their own `template_fields` (`YamlValue`, ...).
        self.changes = [change] if callable(change) else list(change)
        self.message = message
        self.repository = repository
        self.branch = branch
        self.mark = mark
        self.mark_map_index = mark_map_index
        self.instance = instance
        self.flux_receiver_conn_id = flux_receiver_conn_id
        self.attempts = attempts
        self.workdir = workdir

    def execute(self, context: Context) -> dict[str, Any]:
        result = push_change(
            context,
            git_conn_id=self.git_conn_id,
            change=self.changes,
            message=self.message,
            repository=self.repository,
            branch=self.branch,
            mark=self.mark,
            mark_map_index=self.mark_map_index,
            instance=self.instance or None,
            flux_receiver_conn_id=self.flux_receiver_conn_id or None,
            attempts=self.attempts,
            workdir=self.workdir,
        )
        return result.as_xcom()
