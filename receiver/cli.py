"""The `fluxback` command: serve, check-config, config-schema, deliveries, replay.

Every subcommand takes `--config FILE` (or `$FLUXBACK_CONFIG`). `deliveries`
and `replay` work on the journal directly, so they also answer while the
service is down, which is when an operator needs them most.

Exit codes: 0 success, 1 the command ran and found problems (invalid
configuration, unknown delivery ids, the service could not start), 2 usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from receiver.app import StartupError, run
from receiver.config import Config, ConfigError, config_schema_text, load_config, read_config_file
from receiver.journal import (
    DeliveryFilter,
    DeliveryState,
    DeliverySummary,
    Journal,
    JournalUnavailable,
    journal_from_url,
)
from receiver.log import configure_logging
from receiver.replay import NotReplayed, replay
from receiver.service import background_services

_LONG_HEX = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{28,52}\b")
_MAX_NOTE = 60


def _load(args: argparse.Namespace) -> Config | None:
    """The configuration, or None after printing every error with its key."""
    try:
        return load_config(args.config)
    except ConfigError as error:
        for problem in error.errors:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    configure_logging(config.log)
    try:
        run(config, background=background_services)
    except StartupError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except JournalUnavailable as error:
        print(f"error: journal: {error}", file=sys.stderr)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    reading = read_config_file(args.config)
    problems = reading.every_problem()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"configuration OK: {reading.source}")
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(config_schema_text())
    return 0


def _short(revision: str) -> str:
    """A revision with its long hashes cut to 12 characters, for a table that fits a terminal."""
    return _LONG_HEX.sub(r"\1", revision)


def _note(summary: DeliverySummary) -> str:
    if summary.duplicate_of is not None:
        return f"duplicate of {summary.duplicate_of}"
    error = (summary.last_error or "").replace("\n", " ")
    return error if len(error) <= _MAX_NOTE else error[: _MAX_NOTE - 1] + "…"


def _format_table(deliveries: Sequence[DeliverySummary]) -> str:
    """Deliveries as aligned columns, newest first."""
    rows = [("ID", "STATE", "RECEIVED (UTC)", "OBJECT", "REASON", "OUTCOME", "REVISION", "TRIES", "NOTE")]
    for d in deliveries:
        rows.append(
            (
                str(d.id),
                d.state.value,
                d.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                d.object_key,
                d.reason,
                d.outcome,
                _short(d.revision or "-"),
                str(d.attempts),
                _note(d),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


@asynccontextmanager
async def _opened(config: Config) -> AsyncIterator[Journal]:
    journal = journal_from_url(config.journal)
    await journal.open()
    try:
        yield journal
    finally:
        await journal.close()


async def _list(config: Config, query: DeliveryFilter) -> Sequence[DeliverySummary]:
    async with _opened(config) as journal:
        return await journal.list(query)


async def _replay(config: Config, ids: Sequence[int]) -> dict[int, NotReplayed | None]:
    async with _opened(config) as journal:
        return await replay(journal, ids, datetime.now(UTC))


def _journal_missing(config: Config) -> bool:
    """Whether the journal file is missing (opening it would create an empty one), after saying so."""
    path = config.sqlite_path
    if path is None or path.exists():
        return False
    print(f"error: journal: no journal at {path}; is this the service's configuration?", file=sys.stderr)
    return True


def _deliveries(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None or _journal_missing(config):
        return 1
    configure_logging(config.log)
    query = DeliveryFilter(
        revision=args.revision,
        object_key=args.object,
        state=DeliveryState(args.state) if args.state else None,
        dag_id=args.dag_id,
        limit=args.limit,
    )
    try:
        found = asyncio.run(_list(config, query))
    except JournalUnavailable as error:
        print(f"error: journal: {error}", file=sys.stderr)
        return 1
    print(_format_table(found) if found else "no deliveries match")
    return 0


def _replay_command(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None or _journal_missing(config):
        return 1
    configure_logging(config.log)
    try:
        problems = asyncio.run(_replay(config, args.ids))
    except JournalUnavailable as error:
        print(f"error: journal: {error}", file=sys.stderr)
        return 1
    for delivery_id, problem in problems.items():
        if problem is None:
            print(f"delivery {delivery_id}: will be processed again")
        else:
            print(f"error: delivery {delivery_id}: {problem.reason}", file=sys.stderr)
    return 0 if not any(problems.values()) else 1


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="YAML configuration (default: $FLUXBACK_CONFIG, else built-in defaults)",
    )
    parser = argparse.ArgumentParser(
        prog="fluxback", description="Flux CD events in; Airflow task states, DAG runs and asset events out."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the service")
    serve.set_defaults(handler=_serve)

    check = commands.add_parser(
        "check-config", parents=[common], help="validate the configuration and the files it names"
    )
    check.set_defaults(handler=_check_config)

    schema = commands.add_parser(
        "config-schema", help="print the JSON Schema of the configuration file (docs/config.schema.json)"
    )
    schema.set_defaults(handler=_config_schema)

    deliveries = commands.add_parser(
        "deliveries", parents=[common], help="list deliveries from the journal, newest first"
    )
    deliveries.add_argument("--revision", help="a revision, or a commit (full or leading part)")
    deliveries.add_argument("--state", choices=[s.value for s in DeliveryState])
    deliveries.add_argument("--object", metavar="KIND/NAMESPACE/NAME")
    deliveries.add_argument("--dag-id")
    deliveries.add_argument("--limit", type=_positive, default=50)
    deliveries.set_defaults(handler=_deliveries)

    replay = commands.add_parser("replay", parents=[common], help="process finished or dead deliveries again")
    replay.add_argument("ids", metavar="ID", type=_positive, nargs="+")
    replay.set_defaults(handler=_replay_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.handler(args)
    return code
